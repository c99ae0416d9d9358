/* Private: the receptive fields of the 3x3 convolutions and their adjoint (src/nn/im2col.c). */
#ifndef METATRAIN_NN_IM2COL_H
#define METATRAIN_NN_IM2COL_H

#include <stddef.h>

/* The receptive fields of samples 0 … nb − 1 of x, whose channel c holds B planes: plane (c, n) at
 * x + (c·B + n)·H·W. col (C·9, nb·P), rows ld apart: sample n's fields in columns n·P … (n+1)·P − 1. */
void mt_nn_im2col(float *col, size_t ld, const float *x, int B, int nb, int C, int H, int Wd, int stride);
void mt_nn_im2col_f64(double *col, size_t ld, const double *x, int B, int nb, int C, int H, int Wd, int stride);
/* Planes 0 … nb − 1 of each channel of x (laid out as for im2col) = the adjoint of im2col applied
 * to col. */
void mt_nn_col2im(float *x, int B, int nb, const float *col, size_t ld, int C, int H, int Wd, int stride);
void mt_nn_col2im_f64(double *x, int B, int nb, const double *col, size_t ld, int C, int H, int Wd, int stride);

#endif
