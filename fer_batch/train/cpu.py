"""Keep TensorFlow's CPU training off a oneDNN kernel that corrupts the heap.

On CPUs with AVX-512, every TensorFlow release the project allows (2.19.1, 2.20.0 and
2.21.0 measured) routes the filter gradient of a 1x1 convolution with stride 2 to oneDNN's
``jit_1x1:avx512_core`` backward-weights kernel, which corrupts the heap: the process dies
with SIGSEGV or "double free or corruption". mini-XCEPTION's residual shortcuts and
ResNet50's projection shortcuts are such convolutions, so training them crashed while
``cnn4`` (3x3 kernels only) trained. ``ONEDNN_VERBOSE=1`` names the kernel; the minimal
reproduction is ``tf.nn.conv2d(x, w, strides=2)`` with a 1x1 ``w`` under a ``tf.function``
gradient.

Capping oneDNN at AVX2 keeps oneDNN (its AVX2 1x1 kernel is correct) and costs less than
turning it off: a 64-face training step on this 2-core machine takes 325 ms for ``cnn4``
with AVX-512 (which does not crash it), 402 ms with the AVX2 cap and 640 ms with
``TF_ENABLE_ONEDNN_OPTS=0``; mini-XCEPTION takes 154 ms capped and 251 ms without oneDNN.
Inference (forward passes only) is not affected, so only training processes are capped.

oneDNN reads its ISA cap once, when it creates its first primitive, so this must run
before the process executes any TensorFlow op (importing TensorFlow is fine). A user who
set either variable keeps their setting.
"""

from __future__ import annotations

import os

ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
SAFE_ISA = "AVX2"


def cap_onednn_isa() -> None:
    """Cap oneDNN at AVX2 in this process unless the user chose a oneDNN setting."""
    if ISA_VARIABLE in os.environ or "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        return
    os.environ[ISA_VARIABLE] = SAFE_ISA
