// What a GPU knows about a kernel that the C++ build of it cannot say: its
// __launch_bounds__ and its static shared memory. Both are read from nvcc's
// own PTX of the kernel sources (.maxntid / .reqntid and the .shared
// declarations of each .entry); the kernel is found there by its demangled
// name, which the C++ build's symbol table gives for the kernel's address.
#ifndef CC_CPU_KERNEL_INFO_H
#define CC_CPU_KERNEL_INFO_H

#include <cstddef>
#include <string>
#include <vector>

namespace cc_cpu {

struct kernel_info {
    std::string name;     // demangled, e.g. "void (anonymous namespace)::routing_kernel<true>(...)"
    std::string source;   // the PTX file's stem: the .cu it came from
    unsigned max_threads; // threads per block nvcc compiled for (1024 without __launch_bounds__)
    size_t static_smem;   // bytes of static __shared__ memory
    long long launches;   // launches so far (run or captured)
    int max_dynamic_smem; // cudaFuncAttributeMaxDynamicSharedMemorySize, -1 = not set
};

// The kernel at this address (a function pointer of the C++ build), or
// nullptr when it is not in any PTX file given to the build. Not thread-safe
// by itself: the runtime calls it under its lock.
kernel_info *find_kernel(const void *fn);

// The demangled name of the function at this address ("?" if unknown).
std::string name_of(const void *fn);

// Every kernel entry of the PTX files, for coverage reports.
std::vector<kernel_info *> all_kernels();

// The PTX files this build was given (CC_CPU_PTX_FILES), for messages.
const char *ptx_files();

} // namespace cc_cpu

#endif
