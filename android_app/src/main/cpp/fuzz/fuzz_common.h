// What the fuzz targets share: a private scratch directory per process (on tmpfs where there
// is one), emptied between inputs, and a check that aborts (a crash libFuzzer reports and
// saves) when an invariant of the code under test does not hold.
#ifndef NPAS_FUZZ_COMMON_H
#define NPAS_FUZZ_COMMON_H

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace npas_fuzz {

#define FUZZ_CHECK(cond)                                                         \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                              \
    }                                                                            \
  } while (0)

inline std::string scratch_dir(const char* name) {
  struct stat st {};
  const char* base = ::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
  std::string dir = std::string(base) + "/npas-fuzz-" + name + "-" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0700);
  return dir;
}

// Removes every plain file in `dir` (the stores' files are 0444: unlink needs only the
// directory's write permission).
inline void empty_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") ::unlink((dir + "/" + n).c_str());
  }
  ::closedir(d);
}

inline int count_temp_files(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return 0;
  int n = 0;
  while (dirent* e = ::readdir(d)) n += std::string(e->d_name).rfind(".upload-", 0) == 0;
  ::closedir(d);
  return n;
}

}  // namespace npas_fuzz

#endif  // NPAS_FUZZ_COMMON_H
