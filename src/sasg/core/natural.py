"""Each algorithm's natural codec: how its messages are priced when nobody names a codec.

The paper's four algorithms (``sgd``, ``sparse``, ``lasg``, ``sasg``) keep the paper's count,
``paper32``, so their figures stay comparable with the paper's and with every earlier run. A
composition takes its compressor's own code, declared as the class attribute ``default_codec``
(``qsgd``: ``elias``, ``sign``: ``sign``, ``terngrad``: ``ternary``; a capability declared where
it registers, :mod:`sasg.core.capabilities`), because ``paper32``
prices a QSGD level or a sign bit at 32 bits and so hides what the compressor saves; a
compressor that declares none (top-k and the other sparsifiers, PowerSGD, a plug-in) gets
``paper32``. An explicit ``--codec`` (or ``codec=``) always wins.
"""

from __future__ import annotations

NATURAL = "natural"  # the codec name that asks for this choice (the default of RunConfig.codec)
PAPER_CODEC = "paper32"


def natural_codec(algorithm: str) -> str:
    """The codec ``algorithm`` (an alias or a composition) is priced with when none is named."""
    from .declared import capability
    from .registry import ALIASES, REGISTRIES
    from .spec import AlgorithmSpec

    key = str(algorithm).strip().lower()
    if key in ALIASES:
        return PAPER_CODEC
    # Declared where the compressor registers (sasg.core.capabilities): nothing is built.
    entry = REGISTRIES["compressor"].get(AlgorithmSpec.parse(key).compressor)
    return str(capability(entry, "default_codec") or PAPER_CODEC)


def resolve_codec(codec: str | None, algorithm: str) -> str:
    """``codec`` as given, or the natural one where it is ``None`` or ``"natural"``."""
    if codec is None or str(codec).strip().lower() == NATURAL:
        return natural_codec(algorithm)
    return str(codec).strip().lower()
