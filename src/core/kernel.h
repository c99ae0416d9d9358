/* MT_KERNEL: how hot loops are compiled. Include it from any source file with such loops. */
#ifndef METATRAIN_KERNEL_H
#define METATRAIN_KERNEL_H

/* Hot loops are compiled three times and the best the CPU supports is picked at load time, so a
 * portable binary still vectorizes with AVX-512 or AVX2 and FMA. Feature tests, not CPU names:
 * "arch=" clones would match only Intel parts. */
#if defined(__clang__) && __clang_major__ < 18
/* Clang before 18 names the dispatcher "name.ifunc", so calls from other files do not link
 * (llvm-project PR 71706): one plain version there (scripts/fuzz builds with clang 14). */
#define MT_KERNEL
#else
#define MT_KERNEL __attribute__((target_clones("avx512f", "fma", "default")))
#endif

#endif
