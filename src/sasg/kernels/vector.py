r"""Vector operations that numba's Python cannot spell, as small LLVM intrinsics.

:func:`above_bits` turns 64 compares into one 64-bit word. Written as a Python loop
(``w |= (x[j] > t) << j``), LLVM keeps 64 scalar shifts and ors, about a quarter of a cycle per
entry; as one ``<64 x i1>`` compare bitcast to ``i64``, the backend emits a handful of vector
compares and mask moves (here, with AVX-512: four ``vpcmpgtd`` into ``k`` registers and their
concatenation), near one read of the data: top-k's candidate pass on FC's 401,408-entry tensor
went from 33 to 22 us (2-core AMD EPYC, the pass called alone from a script, median of 2,000).
The IR is plain LLVM, valid on every target numba runs on; only its speed depends on the
vector unit (only the AVX-512 form has been looked at).
"""

from __future__ import annotations

try:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - no numba: the kernels are off (see sasg.kernels)
    intrinsic = None

_LANES = 64

if intrinsic is not None:

    @intrinsic
    def above_bits(typingctx, arr, at, mask, t):
        """``sum(((arr[at + j] & mask) > t) << j for j in range(64))`` as a ``uint64``, for a
        contiguous 1-d integer array (signed compare, ``mask`` and ``t`` cast to its type).
        Unchecked: the caller keeps ``at + 64 <= len(arr)``."""
        if not (isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)
                and arr.layout == "C" and arr.ndim == 1):
            return None
        elt_ty = arr.dtype

        def codegen(context, builder, sig, args):
            a, where, m, thr = args
            data = context.make_array(sig.args[0])(context, builder, a).data
            elt = context.get_value_type(elt_ty)
            vec = ir.VectorType(elt, _LANES)
            where = context.cast(builder, where, sig.args[1], types.intp)
            ptr = builder.bitcast(builder.gep(data, [where]), vec.as_pointer())
            v = builder.load(ptr, align=elt_ty.bitwidth // 8)

            def splat(value, ty):
                one = builder.insert_element(ir.Constant(vec, ir.Undefined),
                                             context.cast(builder, value, ty, elt_ty),
                                             ir.Constant(ir.IntType(32), 0))
                zeros = ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES)
                return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), zeros)

            hits = builder.icmp_signed(">", builder.and_(v, splat(m, sig.args[2])), splat(thr, sig.args[3]))
            return builder.bitcast(hits, ir.IntType(_LANES))

        return types.uint64(arr, at, mask, t), codegen

else:  # pragma: no cover
    above_bits = None

__all__ = ["above_bits"]
