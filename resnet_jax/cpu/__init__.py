"""C++ kernels for XLA:CPU (oneDNN convolution gradients, BatchNorm's sums, the stem's max pool),
built on first use, and the switches that fall back to XLA's own."""
