"""``inspectnet finetune MODEL DATA --plugin ebp:K=25,lam=1e-3,layer=layer4 --epochs N --out DIR``.

Under ``torchrun --nproc-per-node N`` the same command trains with DDP (gloo on CPU, nccl on CUDA).
"""

import argparse
import os

from inspectnet.cli.options import add_data_args, add_model_args, data_from_args, emit, model_from_args, start_distributed
from inspectnet.cli.train import add_train_args, config_from_args, log_line


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("finetune", help="fine-tune with interpretability plugins (EBP, CGL, SAN, k-WTA, ...)",
                       description="Fine-tune MODEL on DATA with one or more plugins (see `inspectnet plugins`). "
                                   "Checkpoints every epoch; re-running the same command (or --resume) continues "
                                   "where it stopped. Launch under torchrun for multi-process DDP.")
    add_model_args(p)
    add_data_args(p, limit=False)
    add_train_args(p)
    p.add_argument("--plugin", action="append", default=[], metavar="NAME:K=V,...",
                   help="plugin spec, e.g. ebp:K=25,lam=1e-3,layer=layer4 (repeatable; list values with |)")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics and affine parameters fixed")
    p.add_argument("--freeze-until", metavar="LAYER", help="freeze every parameter up to and including LAYER")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="mixed precision (auto: on for CUDA); regularizers always run in float32")
    p.add_argument("--resume", action="store_true",
                   help="require a checkpoint in --out and continue from it (re-running also resumes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet finetune`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.

    Raises:
        InspectnetError: ``--resume`` names a folder without a checkpoint (or an input is refused on the way).
    """
    from inspectnet.core.errors import InspectnetError
    from inspectnet.models.provenance import record_command
    from inspectnet.models.zoo import adopt_class_names
    from inspectnet.training.finetune import finetune
    from inspectnet.training.loop import CHECKPOINT, epoch_line

    if args.resume and not os.path.exists(os.path.join(args.out, CHECKPOINT)):
        raise InspectnetError(f"--resume: {args.out} holds no {CHECKPOINT} to continue from")
    config = config_from_args(args)  # bad values are refused before the model and data load
    start_distributed()
    zm = model_from_args(args)
    ds = adopt_class_names(zm, data_from_args(args, zm))
    eval_ds = data_from_args(args, zm, args.eval_data) if args.eval_data else None
    amp = {"auto": None, "on": True, "off": False}[args.amp]
    result = finetune(zm, ds, args.out, args.plugin, config, eval_data=eval_ds,
                      device=_device(args.device), freeze_bn=args.freeze_bn, freeze_until_layer=args.freeze_until,
                      amp=amp, log=log_line)
    if _rank_zero():
        record_command(args.out, ["inspectnet", *args.argv], start=args.model)
    emit(result.to_dict(), args.json, "\n".join(epoch_line(h) for h in result.history)
         + f"\nplugins: {', '.join(result.plugins) or '(none)'}"
         f"\nsaved model to {args.out}")
    return 0


def _rank_zero() -> bool:
    from inspectnet.core.distributed import world

    return world()[1] == 0


def _device(device: str) -> str:
    import torch

    if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device
