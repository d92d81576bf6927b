// A caching allocator for XLA's large CPU buffers (see host_alloc.py for why).
//
// XLA's CPU runtime gets every buffer of a step from posix_memalign and frees it when the
// step ends. glibc mmaps and unmaps blocks this size each time, or leaves a hole in its
// heap that the next, equally large request does not fit, so every page of the step's
// temporaries faults and is zeroed again on every step. Here, aligned requests of at
// least `threshold` bytes are served from one reserved address range instead, and freed
// blocks stay mapped for the next request. install() points the GOT entries of the named
// libraries (XLA's) for posix_memalign, aligned_alloc, free, realloc and
// malloc_usable_size at the functions below; every other pointer goes on to libc.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using PosixMemalignFn = int (*)(void**, size_t, size_t);
using AlignedAllocFn = void* (*)(size_t, size_t);
using FreeFn = void (*)(void*);
using ReallocFn = void* (*)(void*, size_t);
using MallocFn = void* (*)(size_t);
using UsableSizeFn = size_t (*)(void*);

PosixMemalignFn real_posix_memalign;
AlignedAllocFn real_aligned_alloc;
FreeFn real_free;
ReallocFn real_realloc;
MallocFn real_malloc;
UsableSizeFn real_usable_size;

constexpr size_t kGranule = size_t{1} << 16;   // block sizes and offsets: 64 KiB
constexpr size_t kMaxAlign = kGranule;

char* region = nullptr;       // reserved PROT_NONE, made RW as `top` grows
size_t region_size = 0;
size_t threshold = size_t{1} << 20;
std::mutex mu;
size_t top = 0;                                 // bytes of the region handed out so far
std::map<size_t, size_t> free_extents;          // offset -> length, coalesced
std::unordered_map<size_t, size_t> live;        // offset -> length
uint64_t n_alloc = 0, n_reused = 0, live_bytes = 0, cached_bytes = 0;

inline bool Ours(const void* p) {
  return region != nullptr &&
         static_cast<size_t>(static_cast<const char*>(p) - region) < region_size;
}

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// A block of at least n bytes (n a multiple of kGranule), or nullptr.
void* Take(size_t n) {
  std::lock_guard<std::mutex> lock(mu);
  // Best fit among the cached extents: the smallest that is large enough.
  auto best = free_extents.end();
  for (auto it = free_extents.begin(); it != free_extents.end(); ++it) {
    if (it->second >= n && (best == free_extents.end() || it->second < best->second)) {
      best = it;
    }
  }
  size_t offset;
  if (best != free_extents.end()) {
    offset = best->first;
    size_t rest = best->second - n;
    free_extents.erase(best);
    if (rest) free_extents.emplace(offset + n, rest);
    cached_bytes -= n;
    ++n_reused;
  } else {
    // Grow: extend a cached extent that ends at `top` rather than leave it behind.
    offset = top;
    size_t have = 0;
    if (!free_extents.empty()) {
      auto last = std::prev(free_extents.end());
      if (last->first + last->second == top) {
        offset = last->first;
        have = last->second;
      }
    }
    size_t grow = n - have;
    if (top + grow > region_size) return nullptr;
    if (mprotect(region + top, grow, PROT_READ | PROT_WRITE) != 0) return nullptr;
    if (have) {
      free_extents.erase(offset);
      cached_bytes -= have;
    }
    top += grow;
  }
  live.emplace(offset, n);
  live_bytes += n;
  ++n_alloc;
  return region + offset;
}

void Give(void* p) {
  std::lock_guard<std::mutex> lock(mu);
  size_t offset = static_cast<char*>(p) - region;
  auto it = live.find(offset);
  if (it == live.end()) return;  // not a block start: nothing sane to do
  size_t n = it->second;
  live.erase(it);
  live_bytes -= n;
  cached_bytes += n;
  auto next = free_extents.lower_bound(offset);
  if (next != free_extents.end() && offset + n == next->first) {
    n += next->second;
    next = free_extents.erase(next);
  }
  if (next != free_extents.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += n;
      return;
    }
  }
  free_extents.emplace(offset, n);
}

size_t BlockSize(const void* p) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = live.find(static_cast<const char*>(p) - region);
  return it == live.end() ? 0 : it->second;
}

int HookPosixMemalign(void** out, size_t alignment, size_t size) {
  if (size >= threshold && alignment <= kMaxAlign) {
    if (void* p = Take(RoundUp(size, kGranule))) {
      *out = p;
      return 0;
    }
  }
  return real_posix_memalign(out, alignment, size);
}

void* HookAlignedAlloc(size_t alignment, size_t size) {
  if (size >= threshold && alignment <= kMaxAlign) {
    if (void* p = Take(RoundUp(size, kGranule))) return p;
  }
  return real_aligned_alloc(alignment, size);
}

void HookFree(void* p) {
  if (Ours(p)) {
    Give(p);
  } else {
    real_free(p);
  }
}

void* HookRealloc(void* p, size_t size) {
  if (!Ours(p)) return real_realloc(p, size);
  size_t have = BlockSize(p);
  if (size <= have) return p;
  void* q = real_malloc(size);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, have);
  Give(p);
  return q;
}

size_t HookUsableSize(void* p) { return Ours(p) ? BlockSize(p) : real_usable_size(p); }

struct Hook {
  const char* name;
  void* fn;
};
const Hook kHooks[] = {
    {"posix_memalign", reinterpret_cast<void*>(&HookPosixMemalign)},
    {"aligned_alloc", reinterpret_cast<void*>(&HookAlignedAlloc)},
    {"free", reinterpret_cast<void*>(&HookFree)},
    {"realloc", reinterpret_cast<void*>(&HookRealloc)},
    {"malloc_usable_size", reinterpret_cast<void*>(&HookUsableSize)},
};

#if defined(__x86_64__)
constexpr uint32_t kJumpSlot = R_X86_64_JUMP_SLOT, kGlobDat = R_X86_64_GLOB_DAT,
                   kAbs64 = R_X86_64_64;
#elif defined(__aarch64__)
constexpr uint32_t kJumpSlot = R_AARCH64_JUMP_SLOT, kGlobDat = R_AARCH64_GLOB_DAT,
                   kAbs64 = R_AARCH64_ABS64;
#endif

struct PatchJob {
  std::vector<std::string> libraries;  // substrings of the library paths to patch
  int slots = 0;                       // GOT entries written
  int objects = 0;                     // libraries matched
};

// Writes `fn` into a GOT slot, lifting RELRO's read-only protection for the moment.
bool WriteSlot(void** slot, void* fn) {
  long page = sysconf(_SC_PAGESIZE);
  auto start = reinterpret_cast<uintptr_t>(slot) & ~static_cast<uintptr_t>(page - 1);
  if (mprotect(reinterpret_cast<void*>(start), page, PROT_READ | PROT_WRITE) != 0) {
    return false;
  }
  __atomic_store_n(slot, fn, __ATOMIC_SEQ_CST);
  return true;
}

void PatchRelocations(uintptr_t base, const ElfW(Rela) * rela, size_t bytes,
                      const ElfW(Sym) * symtab, const char* strtab,
                      std::vector<std::pair<void**, void*>>* writes) {
  for (size_t i = 0; i < bytes / sizeof(ElfW(Rela)); ++i) {
    uint32_t type = ELF64_R_TYPE(rela[i].r_info);
    if (type != kJumpSlot && type != kGlobDat && !(type == kAbs64 && rela[i].r_addend == 0)) {
      continue;
    }
    const char* name = strtab + symtab[ELF64_R_SYM(rela[i].r_info)].st_name;
    for (const Hook& hook : kHooks) {
      if (std::strcmp(name, hook.name) == 0) {
        writes->emplace_back(reinterpret_cast<void**>(base + rela[i].r_offset), hook.fn);
      }
    }
  }
}

int PatchObject(struct dl_phdr_info* info, size_t, void* data) {
  auto* job = static_cast<PatchJob*>(data);
  std::string name = info->dlpi_name ? info->dlpi_name : "";
  bool wanted = false;
  for (const auto& lib : job->libraries) wanted |= name.find(lib) != std::string::npos;
  if (!wanted) return 0;
  uintptr_t base = info->dlpi_addr;
  const ElfW(Dyn)* dyn = nullptr;
  uintptr_t relro = 0, relro_end = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) {
      dyn = reinterpret_cast<const ElfW(Dyn)*>(base + info->dlpi_phdr[i].p_vaddr);
    } else if (info->dlpi_phdr[i].p_type == PT_GNU_RELRO) {
      relro = base + info->dlpi_phdr[i].p_vaddr;
      relro_end = relro + info->dlpi_phdr[i].p_memsz;
    }
  }
  if (dyn == nullptr) return 0;
  // glibc has already turned these into addresses on most targets; not on all.
  auto addr = [base](uintptr_t p) { return p < base ? p + base : p; };
  const ElfW(Sym)* symtab = nullptr;
  const char* strtab = nullptr;
  const ElfW(Rela)*jmprel = nullptr, *rela = nullptr;
  size_t jmprel_bytes = 0, rela_bytes = 0;
  for (const ElfW(Dyn)* d = dyn; d->d_tag != DT_NULL; ++d) {
    switch (d->d_tag) {
      case DT_SYMTAB: symtab = reinterpret_cast<const ElfW(Sym)*>(addr(d->d_un.d_ptr)); break;
      case DT_STRTAB: strtab = reinterpret_cast<const char*>(addr(d->d_un.d_ptr)); break;
      case DT_JMPREL: jmprel = reinterpret_cast<const ElfW(Rela)*>(addr(d->d_un.d_ptr)); break;
      case DT_PLTRELSZ: jmprel_bytes = d->d_un.d_val; break;
      case DT_RELA: rela = reinterpret_cast<const ElfW(Rela)*>(addr(d->d_un.d_ptr)); break;
      case DT_RELASZ: rela_bytes = d->d_un.d_val; break;
      default: break;
    }
  }
  if (symtab == nullptr || strtab == nullptr) return 0;
  std::vector<std::pair<void**, void*>> writes;
  if (jmprel) PatchRelocations(base, jmprel, jmprel_bytes, symtab, strtab, &writes);
  if (rela) PatchRelocations(base, rela, rela_bytes, symtab, strtab, &writes);
  long page = sysconf(_SC_PAGESIZE);
  for (auto& [slot, fn] : writes) {
    if (!WriteSlot(slot, fn)) continue;
    ++job->slots;
    auto at = reinterpret_cast<uintptr_t>(slot);
    if (at >= relro && at < relro_end) {
      mprotect(reinterpret_cast<void*>(at & ~static_cast<uintptr_t>(page - 1)), page,
               PROT_READ);
    }
  }
  ++job->objects;
  return 0;
}

template <typename T>
bool Resolve(T* out, const char* name) {
  *out = reinterpret_cast<T>(dlsym(RTLD_DEFAULT, name));
  return *out != nullptr;
}

}  // namespace

extern "C" {

// Reserves `reserve_bytes` of address space and patches the libraries whose paths
// contain one of the ';'-separated `libraries`. Returns the number of GOT slots written
// (0: nothing patched), or -1 if the allocator could not be set up. Call once.
int meldae_host_alloc_install(const char* libraries, size_t reserve_bytes,
                              size_t min_bytes) {
  if (region != nullptr) return -1;
  if (!Resolve(&real_posix_memalign, "posix_memalign") ||
      !Resolve(&real_aligned_alloc, "aligned_alloc") || !Resolve(&real_free, "free") ||
      !Resolve(&real_realloc, "realloc") || !Resolve(&real_malloc, "malloc") ||
      !Resolve(&real_usable_size, "malloc_usable_size")) {
    return -1;
  }
  reserve_bytes = RoundUp(reserve_bytes, kGranule);
  // Blocks start at multiples of kGranule from the region's base, so the base itself
  // must be kMaxAlign-aligned (mmap promises a page): reserve kMaxAlign more and give
  // back what lies before the first aligned address and after the region.
  void* raw = mmap(nullptr, reserve_bytes + kMaxAlign, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return -1;
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kMaxAlign - 1) & ~static_cast<uintptr_t>(kMaxAlign - 1);
  if (aligned > base) munmap(raw, aligned - base);
  if (const size_t tail = kMaxAlign - (aligned - base); tail > 0) {
    munmap(reinterpret_cast<void*>(aligned + reserve_bytes), tail);
  }
  void* r = reinterpret_cast<void*>(aligned);
  madvise(r, reserve_bytes, MADV_HUGEPAGE);  // fewer, larger first-touch faults
  threshold = min_bytes;
  region_size = reserve_bytes;
  region = static_cast<char*>(r);
  PatchJob job;
  std::string all(libraries);
  for (size_t start = 0; start <= all.size();) {
    size_t end = all.find(';', start);
    if (end == std::string::npos) end = all.size();
    if (end > start) job.libraries.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  dl_iterate_phdr(&PatchObject, &job);
  return job.slots;
}

// out: [reserved bytes, bytes mapped so far, live bytes, cached bytes, blocks handed
// out, of which reused from the cache].
void meldae_host_alloc_stats(uint64_t* out) {
  std::lock_guard<std::mutex> lock(mu);
  out[0] = region_size;
  out[1] = top;
  out[2] = live_bytes;
  out[3] = cached_bytes;
  out[4] = n_alloc;
  out[5] = n_reused;
}

// The hooks themselves, for tests that exercise them without patching anything.
int meldae_host_alloc_posix_memalign(void** out, size_t alignment, size_t size) {
  return HookPosixMemalign(out, alignment, size);
}
void meldae_host_alloc_free(void* p) { HookFree(p); }
void* meldae_host_alloc_realloc(void* p, size_t size) { return HookRealloc(p, size); }
size_t meldae_host_alloc_usable_size(void* p) { return HookUsableSize(p); }
}
