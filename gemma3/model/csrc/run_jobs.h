// Shared by the kernels in this folder: jobs [0, jobs) split into contiguous ranges, one per thread, as an OpenMP
// team of torch's own runtime (gemma3/model/native_kernels.py), or std::threads where OpenMP is missing.
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace gemma3 {

// work(begin, end) on up to `threads` threads (the caller's one of them).
template <typename Work>
void run_jobs(int64_t jobs, int64_t threads, const Work& work) {
  const int64_t workers = std::max<int64_t>(1, std::min(threads, jobs));
#ifdef _OPENMP
  // torch's own OpenMP runtime (see native_kernels.py): its threads, not new ones competing with them
#pragma omp parallel num_threads(static_cast<int>(workers))
  {
    const int64_t w = omp_get_thread_num(), nw = omp_get_num_threads();
    work(jobs * w / nw, jobs * (w + 1) / nw);
  }
#else
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < workers; ++w) pool.emplace_back(work, jobs * w / workers, jobs * (w + 1) / workers);
  work(0, jobs / workers);
  for (auto& t : pool) t.join();
#endif
}

}  // namespace gemma3
