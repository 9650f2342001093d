"""sasg inside your own DDP job: a ``DistributedDataParallel`` communication hook.

One line after wrapping the model::

    model = DistributedDataParallel(model)
    state = sasg.ddp.register(model, optimizer=opt)   # opt: SGD, momentum SGD, AdamW, ...
    # ... the usual loop: loss.backward(); opt.step()

Each backward pass is one round of the algorithm: every rank compresses its gradient (top-k per
tensor with error feedback, or any registered compressor and memory), encodes it with the codec,
exchanges the bytes with the other ranks, decodes everyone's message and hands the mean of the
decompressed messages to DDP, which puts it in ``.grad``. Lazy rules (``wk1``, ``ps``) let a
rank skip: it sends nothing and its last message stands. SASG's own rule ``wk2`` (``sasg``,
``lasg``) also needs the gradient at the rank's last upload point on the same minibatch: the loop
hands the hook its loss before the backward pass::

    state = sasg.ddp.register(model, "sasg", optimizer=opt)
    for x, y in loader:
        opt.zero_grad()
        state.second_gradient(lambda m: F.cross_entropy(m(x), y))  # only where the rule checks
        F.cross_entropy(model(x), y).backward()
        opt.step()

The defaults are made for a practitioner's job (small and 1-D tensors whole, 5 dense warm-up
rounds, DGC's momentum correction with momentum SGD, a frozen second moment with Adam):
:mod:`.optimizers` and docs/algorithms.md say why.

Modules: :mod:`.hook` (the hook, :func:`register`; :func:`attach` for a hook installed by
hand), :mod:`.hook_state` (one rank's state), :mod:`.hook_checkpoint` (its checkpoints),
:mod:`.hook_ledger` (what the ledger reports), :mod:`.second_gradient` (``wk2``'s extra pass),
:mod:`.optimizers` (the hook and the user's optimizer), :mod:`.buckets` (DDP's buckets <-> the
model's flat vector),
:mod:`.counting_transport` (the distributed runner's exchange, with bits per rank),
:mod:`.rules` (which algorithms run in a hook), :mod:`.unused` (``find_unused_parameters``),
:mod:`.loss_scale` (fp16's ``torch.amp.GradScaler``: ``register(..., scaler=scaler)``).
"""

from .hook import attach, comm_hook, register
from .rules import hook_algorithm, hook_triggers
from .hook_state import HookState

__all__ = ["HookState", "attach", "comm_hook", "hook_algorithm", "hook_triggers", "register"]
