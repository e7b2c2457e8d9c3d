// The engine's side towards the emulated runtime: run one validated grid.
#ifndef CC_CPU_GRID_H
#define CC_CPU_GRID_H

#include <functional>

#include "cuda_cpu/engine.h"

namespace cc_cpu {

// Runs every block of the grid (one block at a time, its threads as OS
// threads) and returns when all have finished. `kernel` names it in fault
// messages. A fault inside the kernel stops the process with a message.
void run_grid(const launch_desc &desc, const char *kernel, const std::function<void()> &body);

} // namespace cc_cpu

#endif
