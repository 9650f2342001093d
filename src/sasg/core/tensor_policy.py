r"""Which tensors a compressor sends whole: the per-tensor policy.

Top-k at density h keeps :math:`k_s = \max(1, \lfloor h\,d_s \rfloor)` entries of every tensor.
For the large weight matrices that hold almost all of a model's entries this is the point; for
the small tensors around them (biases, normalisation scales, a first convolution's few kernels)
it keeps one entry of eight or of seventy-two, and error feedback delays the rest by many
rounds, while sending them whole costs next to nothing. PowerSGD's hook sends 1-D tensors and
tensors too small to gain from compression as they are (``min_compression_rate``); DGC exempts
them too. A policy names the tensors that travel **whole** (every entry, inside the same message;
the codec writes no index for them, see :mod:`sasg.core.codecs.implied`):

* ``all`` — compress every tensor (the paper's per-layer top-k; the simulator's, the presets' and
  ``sasg compare``'s default: same numbers as before the policy existed);
* ``vectors`` — 1-D tensors (biases, norm scales and shifts) whole;
* ``small=N`` — tensors of at most ``N`` entries whole;
* a comma-separated combination, e.g. ``vectors,small=256``;
* ``auto`` — ``vectors,small=AUTO_SMALL``: the DDP hook's default.
"""

from __future__ import annotations

from dataclasses import dataclass

# A tensor of at most this many entries travels whole under "auto": at 1 % top-k it would keep at
# most 2 entries, so each entry waits ~100 rounds in the error memory, yet sending it whole costs
# at most 256 x 32 bits, under 2 % of one 407,050-entry FC 784-512-10 message.
AUTO_SMALL = 256
# The largest N in small=N that is still a tensor size (larger ones are "every tensor").
MAX_SMALL = 2**62


@dataclass(frozen=True)
class TensorPolicy:
    """A parsed policy: 1-D tensors whole (``vectors``), tensors of at most ``small`` entries whole."""

    vectors: bool = False
    small: int = 0

    @classmethod
    def parse(cls, text) -> "TensorPolicy":
        if not isinstance(text, str):
            raise ValueError(f"tensor policy must be a string such as 'all', 'auto' or 'vectors,small=256', got {text!r}")
        vectors, small = False, 0
        for part in (p.strip().lower() for p in text.split(",")):
            if part == "all":
                continue
            if part == "auto":
                vectors, small = True, max(small, AUTO_SMALL)
            elif part == "vectors":
                vectors = True
            elif part.startswith("small="):
                value = part[len("small="):]
                if not value.isdigit() or not 0 <= int(value) <= MAX_SMALL:
                    raise ValueError(f"tensor policy {text!r}: small=N needs a whole number of entries N >= 0, "
                                     f"got {value!r}; e.g. small=256")
                small = max(small, int(value))
            else:
                raise ValueError(f"unknown tensor policy part {part!r} in {text!r}; use all, auto, vectors, "
                                 "small=N or a comma-separated combination such as vectors,small=256")
        return cls(vectors, small)

    @property
    def name(self) -> str:
        """The canonical spelling (what config files and checkpoints record)."""
        parts = (["vectors"] if self.vectors else []) + ([f"small={self.small}"] if self.small else [])
        return ",".join(parts) or "all"

    def whole(self, shape: tuple[int, ...], numel: int) -> bool:
        """Does a tensor of this shape travel whole?"""
        return (self.vectors and len(shape) <= 1) or numel <= self.small


def whole_segments(layout, policy: str) -> list[bool]:
    """For every segment of ``layout``: does it travel whole under ``policy``?"""
    p = TensorPolicy.parse(policy)
    return [p.whole(seg.shape, seg.numel) for seg in layout.segments]


def check_tensor_policy(text) -> str:
    """``text`` validated, in its canonical spelling (``"auto"`` -> ``"vectors,small=256"``)."""
    return TensorPolicy.parse(text).name
