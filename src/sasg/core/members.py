"""The built-in members and the paper's aliases, registered by name (imported by :mod:`sasg.core`)."""

from __future__ import annotations

from .aggregate import ROTATING
from .codecs import Paper32
from .codecs.composite import register_parts
from .codecs.implied import ImpliedIndices
from .compressors import Identity, TopK
from .compressors import GlobalTopK, RandomK, ScaledSign, TernGrad
from .compressors import DGC
from .memories import ErrorFeedback, NoMemory
from .registry import register, register_alias
from .triggers import PS, WK1, WK2, Always, PSPlain, WK1Plain
from .compressors.powersgd import PowerSGD
from .memories.ef21 import EF21
from .triggers.clag import CLAG
from .compressors.qsgd import QSGD
from .codecs.value.elias import Elias

# What each member can do beyond its protocol (sasg.core.capabilities), known without building it;
# the build checks that the member agrees.
_WK2 = {"lazy": True, "needs_stale_grads": True, "window": True, "checked_rows": True}
_NO_SECOND_GRADIENT = {"lazy": True, "needs_stale_grads": False, "window": True}
_SPARSIFIER = {"default_memory": "ef", "k_per_segment": True}

register("trigger", "always", "every worker uploads every round", lambda layout, s: Always(),
         capabilities={"lazy": False, "needs_stale_grads": False})
register("trigger", "wk2", "LASG-WK2 lazy rule: upload when the gradient changed since the last upload "
         "(second gradient at the anchor; --window D, --threshold-scale c)",
         lambda layout, s: WK2(s.window, s.threshold_scale, s.window_sum, s.aggregate == ROTATING),
         capabilities=_WK2)
register("trigger", "wk1", "LASG-WK1 lazy rule: upload when the fresh gradient moved away from the last uploaded "
         "one by more than the minibatch noise, ||g - g_last||^2 - 2 s^2 > thr, s^2 a running estimate (no second "
         "gradient; --window D, --threshold-scale c)",
         lambda layout, s: WK1(s.window, s.threshold_scale, s.window_sum, s.aggregate == ROTATING),
         capabilities=_NO_SECOND_GRADIENT)
register("trigger", "ps", "LASG-PS lazy rule: upload when L_m^2 x the parameter drift since the last upload is "
         "large, L_m^2 a noise-aware least-squares slope of the gradient change on the drift (no second "
         "gradient; --window D, --threshold-scale c)",
         lambda layout, s: PS(s.window, s.threshold_scale, s.window_sum, s.aggregate == ROTATING),
         capabilities=_NO_SECOND_GRADIENT)
register("trigger", "wk1-plain", "wk1 without the noise allowance, ||g - g_last||^2 > thr (the earlier wk1; its two "
         "minibatches' noise keeps it uploading once the steps are small)",
         lambda layout, s: WK1Plain(s.window, s.threshold_scale, s.window_sum, s.aggregate == ROTATING),
         capabilities=_NO_SECOND_GRADIENT)
register("trigger", "ps-plain", "ps with L_m the running maximum of the noisy secants (the earlier ps; the noise "
         "inflates L_m and keeps it uploading)",
         lambda layout, s: PSPlain(s.window, s.threshold_scale, s.window_sum, s.aggregate == ROTATING),
         capabilities=_NO_SECOND_GRADIENT)
register("compressor", "identity", "send the dense vector as it is", lambda layout, s: Identity(layout),
         capabilities={"default_memory": "none", "honours_tensor_policy": True})
register("compressor", "topk", "keep the max(1, floor(h*d_s)) largest magnitudes of every tensor (--density h); "
         "the tensors --tensor-policy names whole",
         lambda layout, s: TopK(layout, s.density, s.tensor_policy),
         capabilities={"default_memory": "ef", "honours_tensor_policy": True, "k_per_segment": True})
register("compressor", "randomk", "keep max(1, floor(h*d_s)) entries of every tensor drawn uniformly from the "
         "worker's generator (--density h)", lambda layout, s: RandomK(layout, s.density),
         capabilities=_SPARSIFIER)
register("compressor", "globaltopk", "keep the sum_s max(1, floor(h*d_s)) largest magnitudes of the whole model "
         "(--density h)", lambda layout, s: GlobalTopK(layout, s.density),
         capabilities={"default_memory": "ef"})
register("compressor", "sign", "scaled sign (EF-signSGD): per tensor mean|v_s| * sign(v_s), dense",
         lambda layout, s: ScaledSign(layout),
         capabilities={"default_memory": "ef", "default_codec": "sign", "exact_under": ("sign", "elias")})
register("compressor", "terngrad", "TernGrad: per tensor max|v_s| * sign(v_i) * Bernoulli(|v_i|/max|v_s|), "
         "unbiased, dense", lambda layout, s: TernGrad(layout),
         capabilities={"default_memory": "none", "default_codec": "ternary", "exact_under": ("ternary", "elias")})
register("compressor", "qsgd", "QSGD: per tensor ||v_s||_2/s * sign(v_i) * xi_i, xi_i the stochastic rounding of "
         "s|v_i|/||v_s||_2 to an integer level, s = 16; unbiased, dense (natural codec: elias)",
         lambda layout, s: QSGD(layout),
         capabilities={"default_memory": "none", "default_codec": "elias", "exact_under": ("elias",)})
register("compressor", "dgc", "Deep Gradient Compression: per tensor the entries with |v| >= the round(h*n)-th "
         "largest |v| of a 1 % sample of n, at most max(1, floor(h*d_s)) of them (the exact top ones): the count "
         "varies, its real nnz is priced (--density h)", lambda layout, s: DGC(layout, s.density),
         capabilities=_SPARSIFIER)
register("trigger", "clag", "CLAG (3PC) lazy rule: upload C(s*g - h) when ||s*g - h||^2 > (1/c) ||s*g - s*g_prev||^2, "
         "h the EF21 estimate (no second gradient, default memory ef21; --threshold-scale c)",
         lambda layout, s: CLAG(s.threshold_scale),
         capabilities={"lazy": True, "needs_stale_grads": False, "default_memory": "ef21", "check_algorithm": True})
register("compressor", "powersgd", "PowerSGD rank 2: per matrix P = M Q summed over uploaders and orthonormalized, "
         "then Q = M^T P; warm start, vectors sent as they are", lambda layout, s: PowerSGD(layout),
         capabilities={"default_memory": "ef", "server_buffers": True, "begin_round": True})
register("memory", "ef21", "EF21: keep the estimate h, send C(s*g - h), h += decoded on worker and server, "
         "the server applies sum_m h_m", lambda layout, s: EF21(),
         capabilities={"server_store": True, "receive": True})
register("memory", "ef", "error feedback: keep v - q and add it to the next upload", lambda layout, s: ErrorFeedback(),
         capabilities={})
register("memory", "none", "keep nothing: what the compressor drops is lost", lambda layout, s: NoMemory(),
         capabilities={})
register("codec", "paper32", "the paper's count: int32 indices + 32-bit values (float32 parameters), no header",
         lambda layout, s: Paper32(layout.numel, ImpliedIndices.for_settings(layout, s)))
register("codec", "elias", "QSGD's coding: per tensor a float32 unit, per value an Elias gamma coded integer level "
         "and a sign bit (exact for qsgd; other values round to the nearest of 17 levels); sparse: idx32 indices first",
         lambda layout, s: Elias(layout))

register_parts()  # index codes and value formats: the parts of INDEX+VALUE codecs

register_alias("sgd", "always+identity", "dense SGD (the baseline)")
register_alias("sparse", "always+topk", "top-k with error feedback, every round")
register_alias("lasg", "wk2+identity", "LASG-WK2: lazy rule, dense messages")
register_alias("sasg", "wk2+topk", "SASG: lazy rule, top-k with error feedback")
