// Kernel facts from nvcc's PTX, matched to the C++ build's kernels by name
// (see kernel_info.h). The PTX files are compiled by the build from the same
// sources (tests/emu_tests.cmake) and listed in CC_CPU_PTX_FILES.
#include "kernel_info.h"

#include <cxxabi.h>
#include <elf.h>
#include <link.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <vector>

#ifndef CC_CPU_PTX_FILES
#error "CC_CPU_PTX_FILES (the PTX of the kernel sources, ;-separated) must be defined by the build"
#endif

namespace cc_cpu {
namespace {

std::string demangle(const char *mangled)
{
    int status = 0;
    std::unique_ptr<char, void (*)(void *)> s(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
    return status == 0 && s ? std::string(s.get()) : std::string(mangled);
}

// Template instances demangle with their return type first ("void ns::k<1>(int)").
std::string without_return_type(const std::string &name) { return name.rfind("void ", 0) == 0 ? name.substr(5) : name; }

size_t ptx_type_bytes(const std::string &type)
{
    // .b8 .u16 .f32 .s64 ...: the bit count after the dot and the letter.
    const long bits = type.size() > 2 ? std::strtol(type.c_str() + 2, nullptr, 10) : 0;
    return bits > 0 ? static_cast<size_t>(bits) / 8 : 0;
}

struct table {
    std::map<std::string, kernel_info> by_name;
    std::map<uintptr_t, std::string> symbols; // address -> mangled name, of this program
    bool loaded = false;
};

table &the_table()
{
    static table *t = new table;
    return *t;
}

// Whether a PTX line can be one of the declarations load_ptx reads (an
// .entry, its .maxntid/.reqntid, a .shared variable): all of them begin,
// after indentation, with one of these directives. Nearly all of the ~12 MB
// of PTX is instructions; running the patterns over every line took ~9 s of
// each emu process under TSan (std::regex, instrumented), and every emu test,
// every child process of one and every injected bug's run paid it.
bool may_declare(const std::string &line)
{
    const size_t at = line.find_first_not_of(" \t");
    if (at == std::string::npos || line[at] != '.') return false;
    static const char *const directives[] = {".visible", ".weak", ".entry", ".maxntid", ".reqntid", ".shared"};
    return std::any_of(std::begin(directives), std::end(directives),
                       [&](const char *d) { return line.compare(at, std::strlen(d), d) == 0; });
}

void load_ptx(table &t, const std::string &path)
{
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "cuda_cpu: cannot read %s (nvcc's PTX of the kernels, made by the build)\n", path.c_str());
        std::abort();
    }
    std::string stem = path.substr(path.find_last_of('/') + 1);
    stem = stem.substr(0, stem.find('.'));
    static const std::regex entry_re(R"(^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+([A-Za-z_$][\w$]*)\s*\()");
    static const std::regex ntid_re(R"(^\s*\.(?:maxntid|reqntid)\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?)");
    static const std::regex shared_re(
        R"(^\s*\.shared\s+(?:\.align\s+\d+\s+)?(\.[busf]\d+)\s+([A-Za-z_$][\w$]*)\s*(?:\[(\d+)\])?\s*;)");
    std::string line, current;
    std::map<std::string, size_t> module_shared; // shared variables outside any entry (attributed by name)
    bool in_body = false;
    std::smatch m;
    while (std::getline(in, line)) {
        if (line == "{") in_body = true;
        if (line == "}") {
            in_body = false;
            current.clear();
        }
        if (!may_declare(line)) continue;
        if (std::regex_search(line, m, entry_re)) {
            current = m[1].str();
            kernel_info info;
            info.name = demangle(current.c_str());
            info.source = stem;
            info.max_threads = 1024;
            info.static_smem = 0;
            info.launches = 0;
            info.max_dynamic_smem = -1;
            const auto same = t.by_name.find(info.name);
            if (same != t.by_name.end() && same->second.source != stem) {
                // Kernels are told apart by name: two files with one kernel
                // name (both in an anonymous namespace) cannot be.
                std::fprintf(stderr, "cuda_cpu: kernel %s is in both %s.cu and %s.cu; rename one\n", info.name.c_str(),
                             same->second.source.c_str(), stem.c_str());
                std::abort();
            }
            t.by_name[info.name] = info;
            in_body = false;
            continue;
        }
        if (!current.empty() && !in_body && std::regex_search(line, m, ntid_re)) {
            unsigned n = static_cast<unsigned>(std::stoul(m[1].str()));
            if (m[2].matched) n *= static_cast<unsigned>(std::stoul(m[2].str()));
            if (m[3].matched) n *= static_cast<unsigned>(std::stoul(m[3].str()));
            t.by_name[demangle(current.c_str())].max_threads = n;
            continue;
        }
        if (std::regex_search(line, m, shared_re)) {
            const size_t count = m[3].matched ? std::stoul(m[3].str()) : 1;
            const size_t bytes = ptx_type_bytes(m[1].str()) * count;
            if (in_body && !current.empty())
                t.by_name[demangle(current.c_str())].static_smem += bytes;
            else
                module_shared[m[2].str()] += bytes;
        }
    }
    // Older PTX declares a kernel's static shared variables at module scope,
    // named as function-local statics of the kernel: "<kernel>::<var>".
    for (const auto &[var, bytes] : module_shared) {
        const std::string owner = without_return_type(demangle(var.c_str()));
        for (auto &entry : t.by_name)
            if (owner.rfind(without_return_type(entry.second.name) + "::", 0) == 0) entry.second.static_smem += bytes;
    }
}

// The program's own symbol table (.symtab of /proc/self/exe): the kernels
// are local symbols, which dladdr cannot see.
void load_symbols(table &t)
{
    std::ifstream in("/proc/self/exe", std::ios::binary);
    std::vector<char> image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (image.size() < sizeof(Elf64_Ehdr)) return;
    Elf64_Ehdr eh;
    std::memcpy(&eh, image.data(), sizeof eh);
    if (eh.e_shoff == 0 || eh.e_shoff + static_cast<size_t>(eh.e_shnum) * sizeof(Elf64_Shdr) > image.size()) return;
    std::vector<Elf64_Shdr> sections(eh.e_shnum);
    std::memcpy(sections.data(), image.data() + eh.e_shoff, sections.size() * sizeof(Elf64_Shdr));
    // The load address of the program (PIE): dl_iterate_phdr's first object.
    uintptr_t bias = 0;
    dl_iterate_phdr(
        [](dl_phdr_info *info, size_t, void *out) {
            *static_cast<uintptr_t *>(out) = info->dlpi_addr;
            return 1;
        },
        &bias);
    for (const Elf64_Shdr &s : sections) {
        if (s.sh_type != SHT_SYMTAB || s.sh_link >= sections.size()) continue;
        const Elf64_Shdr &strtab = sections[s.sh_link];
        const size_t n = s.sh_size / sizeof(Elf64_Sym);
        for (size_t i = 0; i < n; ++i) {
            Elf64_Sym sym;
            const size_t at = s.sh_offset + i * sizeof(Elf64_Sym);
            if (at + sizeof sym > image.size()) break;
            std::memcpy(&sym, image.data() + at, sizeof sym);
            if (ELF64_ST_TYPE(sym.st_info) != STT_FUNC || sym.st_value == 0) continue;
            const size_t name_at = strtab.sh_offset + sym.st_name;
            if (name_at >= image.size()) continue;
            t.symbols[bias + sym.st_value] = std::string(image.data() + name_at);
        }
    }
}

void load(table &t)
{
    if (t.loaded) return;
    t.loaded = true;
    std::stringstream list(CC_CPU_PTX_FILES);
    std::string path;
    while (std::getline(list, path, ';'))
        if (!path.empty()) load_ptx(t, path);
    load_symbols(t);
    // CC_CPU_LIST_KERNELS=1: what was read, for a layer that refuses a launch unexpectedly.
    if (std::getenv("CC_CPU_LIST_KERNELS") != nullptr)
        for (const auto &[name, info] : t.by_name)
            std::fprintf(stderr, "cuda_cpu: kernel %s (%s.cu): at most %u threads, %zu bytes of static shared memory\n",
                         name.c_str(), info.source.c_str(), info.max_threads, info.static_smem);
}

} // namespace

kernel_info *find_kernel(const void *fn)
{
    table &t = the_table();
    load(t);
    const auto sym = t.symbols.find(reinterpret_cast<uintptr_t>(fn));
    if (sym == t.symbols.end()) return nullptr;
    const auto it = t.by_name.find(demangle(sym->second.c_str()));
    return it == t.by_name.end() ? nullptr : &it->second;
}

std::string name_of(const void *fn)
{
    table &t = the_table();
    load(t);
    const auto sym = t.symbols.find(reinterpret_cast<uintptr_t>(fn));
    return sym == t.symbols.end() ? std::string("?") : demangle(sym->second.c_str());
}

std::vector<kernel_info *> all_kernels()
{
    table &t = the_table();
    load(t);
    std::vector<kernel_info *> v;
    for (auto &[name, info] : t.by_name) {
        (void)name;
        v.push_back(&info);
    }
    return v;
}

const char *ptx_files() { return CC_CPU_PTX_FILES; }

} // namespace cc_cpu
