"""Compiled matrix-vector products for decoding on a CPU: y = x @ W.T * scales + bias for a few rows of x, with
W (N, K) in fp32 or int8 (one fp32 scale per output row), compiled with numba.

Why they exist: decoding one token multiplies one row by every weight matrix, so a step costs the time to stream
the weights from memory. These loops do nothing else: each thread takes a block of output rows, reads each weight
row once for all the input rows, and sums in fp32 (an int8 weight becomes an fp32 one in a register: a quarter of
the bytes, the same arithmetic as dequantizing first). PyTorch's general kernels pay per call for blocking and
packing meant for big matrices, and have no fast int8-weight, fp32-activation product without native bf16
(figures: bench/RESULTS.md).

    >>> out = np.empty((1, 3072), np.float32)
    >>> matvec_int8(x, weight_int8, scales, bias, out)   # x (1, 768) fp32 -> out (1, 3072)

Leaf module: numpy and numba only. Compiled once per machine and cached on disk like the tokenizer's kernels.
"""
import numpy as np
from numba import njit, prange

from gpt2_llm.tokenizer import kernels  # noqa: F401  (chooses numba's cache folder, also for these kernels)

ROWS_PER_TASK = 16  # output rows per parallel task: enough work per task, enough tasks to balance 2-64 threads


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def matvec_int8(x, weight, scales, bias, out):
    """out (M, N) = (x (M, K) @ weight (N, K).T) * scales (N,) + bias (N,); weight int8, the rest fp32."""
    num_outputs, num_inputs = weight.shape
    for task in prange((num_outputs + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        row = np.empty(num_inputs, np.float32)  # a weight row in fp32, converted once for all of x's rows
        for o in range(task * ROWS_PER_TASK, min(num_outputs, (task + 1) * ROWS_PER_TASK)):
            if x.shape[0] == 1:  # one token: convert as it streams by (fastmath: vectorized, in registers)
                total = np.float32(0.0)
                for k in range(num_inputs):
                    total += np.float32(weight[o, k]) * x[0, k]
                out[0, o] = total * scales[o] + bias[o]
                continue
            for k in range(num_inputs):
                row[k] = weight[o, k]
            for m in range(x.shape[0]):
                total = np.float32(0.0)
                for k in range(num_inputs):
                    total += row[k] * x[m, k]
                out[m, o] = total * scales[o] + bias[o]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def matvec_fp32(x, weight, bias, out):
    """out (M, N) = x (M, K) @ weight (N, K).T + bias (N,), all fp32."""
    num_outputs, num_inputs = weight.shape
    for task in prange((num_outputs + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        for o in range(task * ROWS_PER_TASK, min(num_outputs, (task + 1) * ROWS_PER_TASK)):
            for m in range(x.shape[0]):
                total = np.float32(0.0)
                for k in range(num_inputs):
                    total += weight[o, k] * x[m, k]
                out[m, o] = total + bias[o]
