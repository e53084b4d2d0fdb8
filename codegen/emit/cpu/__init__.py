"""Vectorised CPU kernels on blocked activations (NCHW[x]c), one C template per op family.

The C uses GCC/Clang vector extensions only (``vf``: x floats; no intrinsics headers, no libc),
so the same source compiles to AVX-512, AVX2 or NEON. A blocked tensor has the physical shape
(N, C/x, H, W, x) (channels padded up to a multiple of x); see ``codegen/passes/layout.py``.
One file per family, the name is the spec (the variant parameters are in it):

- ``conv.py``: ``conv2d_{kh}x{kw}s{s}[d{d}]_{nchw|nchw16c}__{isa}_{oc}x{w}w[_{epilogue}]``,
  register-blocked direct convolution, an ``oc`` (oc-blocks) x ``w`` (output columns) tile of
  vector accumulators, broadcast input scalars times vector weights, over every input channel
  and tap. Input plain NCHW (first layers: no padding of 3 channels to x) or blocked; output
  blocked. Groups when channels per group are a multiple of x. ``dwconv2d_...``: depthwise,
  vector x vector over the channel block, same tiling.
- ``winograd.py``: ``conv2d_3x3s1`` by Winograd F(m, 3), m in ``codegen.cost.WINOGRAD`` (2, 4,
  6; tuning ``algo``), on blocked input: ``winograd{m}_input_nchw16c__{isa}`` (B^T d B of one
  tile), ``winograd_gemm_nchw16c__{isa}_{oc}x{t}t`` (one transform point's GEMM over input
  channels), ``winograd{m}_output_nchw16c__{isa}[_{epilogue}]`` (A^T M A + bias + epilogue).
  V and M live in the runner's per-thread ``scratch`` (the step reports its size).
- ``pool.py``: max/avg/adaptive-avg pooling on blocked tensors, the stride-2 max pool on plain
  NCHW; ``eltwise.py``: ``mul_channel``; ``linear.py``: y[n, o-block] as 4 chains of broadcast
  x times packed ``[o/x][k][x]``; ``convert.py``: ``to_nchwxc`` / ``to_nchw``, the layout
  conversions at the blocked region's edges.
- ``pack.py``: the weight layouts these read (``[oc/x][ic/L][kh][kw][L][x]`` for direct convs,
  L = x for blocked input, 1 for plain; ``[c/x][kh][kw][x]`` depthwise; G g G^T per Winograd
  point, done at compile time), zero-padded so pad lanes never change results.
- ``prelude.py``: the vector types, the vector activations, and the epilogue lines.

An epilogue is the element-wise ops fused after the layer, applied in registers before the
store: activations, and "add" (a fused residual: the layer's second input, the skip, read at the
output's NCHW[x]c position; the micro-kernels take it as ``s``, strided like ``y``).

Precision: with ``NEON_FP16`` (``Arm64AndroidToolchain(precision="fp16")``) the same templates
store tensors and weights in ``_Float16``, ``vf`` is 8 halves (NCHW8c), and names carry
``_f16`` before ``__`` (``conv2d_3x3s1_nchw8c_f16__neonfp16_2x6w_relu``). Where each kernel
accumulates, and why:

- direct and depthwise convs, Winograd F(4,3)/F(2,3) (transforms and per-point GEMM), max
  pools, ``mul_channel``, the epilogues: fp16 (FMLA .8h, twice fp32's lanes), as ncnn's fp16
  arithmetic. A direct conv's sums have ic * kh * kw terms: one layer's error (max |error| /
  max |output|, under qemu) is 1e-3 to 1.4e-2 for 27 to 2304 terms; F(4,3)'s fp16 GEMM,
  amplified by its output transform, 4-9% on one random layer; resnet18 at 224 (the arm64
  benchmark's weights) ends at 2.3e-2, 8.3e-3 with F(2,3) only (ncnn fp16: 3.9e-2). No F(6,3).
  ``codegen.cost.FP16_WINOGRAD`` has the numbers and the switch to F(2,3) only (31% more
  instructions).
- Linear: float32 chains (``vw``; k runs to 25088 in vgg16), rounded once after the bias.
- average and adaptive-average pools: float32 sums (a global pool sums a whole plane).
- the graph's inputs and outputs are float32 (``codegen/passes/precision.py``): the layout
  conversions at the ends convert while they copy, a ``cast`` step does it elsewhere.
- sparse formats (``codegen/emit/sparse``, plain NCHW and NCHW8c in _Float16, fp16 weights):
  the convs in fp16 over their kept terms, the block Linear in float32 chains.

Every conv step loops over work items (n, oc-tile, output row); inside, the output row is cut
into interior tiles of ``w`` columns (no padding there, constant tap ranges) plus 1-column edge
calls with the tap range worked out per column. Tuning parameters (``Layer.tuning``): ``algo``,
``w_tile`` and ``oc_tile``; the layout pass records them, ``codegen.cost`` says which values
are legal (``tuning_space``) and which the cost model picks (``default_tuning``).
"""
