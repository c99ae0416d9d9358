/* Includes the per-precision header named by MT_TEMPLATE twice: for float, with names as
 * written, and for double, with names ending in _f64. No include guard: every public header that
 * has numeric code uses it once. */
#define MT_REAL float
#define MT_(name) name
#include MT_TEMPLATE
#undef MT_REAL
#undef MT_

#define MT_REAL double
#define MT_(name) name##_f64
#include MT_TEMPLATE
#undef MT_REAL
#undef MT_

#undef MT_TEMPLATE
