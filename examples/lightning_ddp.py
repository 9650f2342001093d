"""PyTorch Lightning with sasg's DDP communication hook.

    pip install "sasg[lightning]"
    python examples/lightning_ddp.py                      # 2 CPU processes (gloo)
    python examples/lightning_ddp.py --devices 4 --max-steps 500

Lightning takes a communication hook and its state through ``DDPStrategy(ddp_comm_hook=...,
ddp_comm_state=...)``. The state is a :class:`sasg.ddp.HookState` built from the LightningModule
before the Trainer exists; it joins the process group at the first gradient bucket. Lightning
(2.x) installs that hook on CUDA devices only, although gloo/CPU DDP runs hooks as well, so on the
CPU the small callback below installs the same hook on the same state once DDP has wrapped the
model. Lightning builds the optimizer (``configure_optimizers``) after the state, so the callback
also links it when the fit starts (``state.use_optimizer``): DGC's momentum correction for this
momentum SGD, the frozen second moment for an AdamW. It also attaches the state to the DDP model
(``sasg.ddp.attach``), so that under ``find_unused_parameters=True`` the hook sees which parameters
DDP leaves out of a step, as ``sasg.ddp.register`` does for its own.

Clipping: ``--clip 1.0`` gives the hook ``clip_grad_norm=1.0``, which clips the mean gradient's
norm before compression, as Lightning's ``gradient_clip_val`` does under plain DDP. Leave
``gradient_clip_val`` unset with the hook: it would clip the hook's aggregate instead, which is not
the mean gradient (docs/ddp-hook.md, "Gradient clipping"; the hook warns if it sees that).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sasg.ddp
from sasg.data import load_mnist5k
from sasg.threads import use_threads


class MnistFC(L.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class InstallHookOnCPU(L.Callback):
    """Links Lightning's optimizer to the hook's state and attaches the state to Lightning's DDP
    model; and, since Lightning installs ``ddp_comm_hook`` on CUDA only, on the CPU does what it
    would do."""

    def __init__(self, state: sasg.ddp.HookState):
        self.state = state

    def on_fit_start(self, trainer, pl_module):
        self.state.use_optimizer(trainer.optimizers[0])  # (made by configure_optimizers, after the state)
        ddp = trainer.strategy.model
        if trainer.strategy.root_device.type != "cuda":
            ddp.register_comm_hook(self.state, sasg.ddp.comm_hook)
        sasg.ddp.attach(self.state, ddp)  # (under find_unused_parameters: what DDP leaves out of a step)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            t = self.state.ledger.totals()
            print(f"sasg hook: {t['iterations']} rounds, {t['uploads']} uploads, bits up {t['bits_up']:.3e}, "
                  f"bits sent per rank {self.state.bits_by_rank}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--algo", default="always+topk")
    p.add_argument("--codec", default="rice+sign")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--clip", type=float, default=None, metavar="MAX_NORM",
                   help="clip the mean gradient's 2-norm (the hook's clip_grad_norm; not gradient_clip_val)")
    args = p.parse_args()
    use_threads()  # one torch thread per process: ranks share the cores ($SASG_THREADS overrides)

    L.seed_everything(0, verbose=False)
    data = load_mnist5k()
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=args.batch_size, shuffle=True)
    model = MnistFC(args.lr)
    state = sasg.ddp.HookState(model, algo=args.algo, codec=args.codec, density=args.density,
                               clip_grad_norm=args.clip)
    on_gpu = torch.cuda.is_available()
    strategy = DDPStrategy(ddp_comm_state=state, ddp_comm_hook=sasg.ddp.comm_hook,
                           process_group_backend="nccl" if on_gpu else "gloo")
    trainer = L.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=args.devices, strategy=strategy,
                        max_steps=args.max_steps, callbacks=[InstallHookOnCPU(state)], logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, loader)


if __name__ == "__main__":
    main()
