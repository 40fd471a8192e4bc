"""Memory for tune-top's feature tables: sizes, the C allocator's setting, buffers TensorFlow can adopt.

`parse_memory` reads `--max-memory`; `keep_freed_memory` is the glibc setting
that makes streamed epochs as cheap as in-memory ones; `aligned_empty` and
`host_tensor` hand a NumPy table to TensorFlow without a copy (DLPack).
"""

import re

import numpy as np

from mlkit.errors import MlkitError

# Eigen's kernels need tensor memory aligned to 64 bytes (EIGEN_MAX_ALIGN_BYTES); TensorFlow aborts otherwise.
TENSOR_ALIGN = 64
# glibc's mallopt parameter M_TOP_PAD, and the pad that keeps a thread arena's 64 MiB heap from being unmapped.
M_TOP_PAD = -2
HEAP_PAD = 64 << 20


def parse_memory(text):
    """Bytes from a size such as '512M', '4G' or '1.5GB' (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not match:
        raise MlkitError(f"--max-memory {text!r}: expected a size such as 512M or 4G")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit or " "))


def keep_freed_memory(pad=HEAP_PAD):
    """Asks glibc's malloc to keep `pad` bytes of freed memory at the top of each heap instead of unmapping it.

    A streamed tune-top epoch ran at half the in-memory speed, and not for its
    reading: TensorFlow's training step faulted about 16 MB of fresh pages
    every batch (5.6 M minor faults per 90,000 rows, against 0.15 M in
    memory): glibc gave freed heap memory back to the kernel and the next
    step faulted it in again. A higher MALLOC_TRIM_THRESHOLD_ did not stop it,
    the top pad did (glibc deletes an emptied thread-arena heap, 64 MiB, unless
    the pad asks it to keep that much). With it the streamed epoch costs the
    in-memory epoch's CPU time (BENCHMARKS.md, Scale). The memory kept is
    memory the process already used.

    It is a setting of the whole process's C allocator, so the library never
    makes it on its own: `mlkit tune-top` and `mlkit lr-find` call this first,
    and a Python user who streams calls it once, or starts Python with
    MALLOC_TOP_PAD_=67108864 in the environment. Where the C library is not
    glibc it does nothing.

    Args:
        pad: bytes kept per heap. Defaults to 64 MiB, the size of a thread arena's heap.

    Returns:
        True when the allocator took the setting.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TOP_PAD, int(pad)))


def aligned_empty(shape, dtype):
    """An uninitialised array whose data starts on a `TENSOR_ALIGN` boundary, so TensorFlow can use it in place."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + TENSOR_ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def host_tensor(array):
    """A CPU tensor that shares `array`'s memory (an aligned copy of it, when it is not aligned).

    `tf.constant` copies an array twice on its way to the CPU device: loading a
    feature table of 4.8 GiB peaked at three copies of it. DLPack hands the
    buffer over as it is, and the tensor keeps the array alive.
    """
    import tensorflow as tf

    array = np.asarray(array)
    if array.ctypes.data % TENSOR_ALIGN or not array.flags.c_contiguous or not array.flags.writeable:
        aligned = aligned_empty(array.shape, array.dtype)
        aligned[...] = array
        array = aligned
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
