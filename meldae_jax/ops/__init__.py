"""CPU speed: custom kernels the models use in place of XLA ops (each with an XLA
fallback), the host allocator for XLA's buffers, and the build of their C++ sources."""
