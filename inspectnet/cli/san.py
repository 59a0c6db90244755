"""``inspectnet san DATA --activation peaks,max-pool-indices --kernel-sizes 3,5,7 --kernels q --out DIR``.

Trains Sparsely Activated Networks on the images of DATA (or, with ``--model M --layer L``, on that
layer's activation maps), selects each activation's kernel size by the lowest validation φ̄ and
writes ``san.json``, ``san.md`` (φ̄ / CR⁻¹ / L̃ table) and ``kernels.png``.
"""

import argparse

from inspectnet.cli.options import emit, seed
from inspectnet.core.storage import atomic_write_text, check_output_dir, output_dir


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``san`` command and its options to the command line.

    Args:
        sub: the subcommand parsers of ``inspectnet``.
    """
    p = sub.add_parser("san", help="train Sparsely Activated Networks and select the kernel size by φ̄",
                       description="Sparsely Activated Networks (Bizopoulos & Koutsouris) on images or a layer's maps.")
    p.add_argument("data", help="image data spec (mnist5k, digits, a folder, ...)")
    p.add_argument("--model", help="probe this model's --layer maps instead of using the images")
    p.add_argument("--layer", help="layer whose activation maps are the SAN inputs (with --model)")
    p.add_argument("--channels", type=int, default=8, help="maps per image taken from --layer")
    p.add_argument("--activation", help="comma-separated activations (default: every one; identity, "
                                         "max-activations, max-pool-indices, peaks, ...)")
    p.add_argument("--kernel-sizes", type=_ints, default=[3, 5, 7], help="odd kernel sizes to select from")
    p.add_argument("--kernels", type=int, default=2, help="number of kernels q (paper, MNIST: 2)")
    p.add_argument("--k", type=int, default=0,
                   help="survivors per map for max-activations (0: the paper's ⌊n/m⌋^dim for kernel size m)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=1000, help="use only the first N samples")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspectnet san`` with the parsed options.

    Args:
        args: the options that :func:`register` declares.

    Returns:
        The exit status, 0.

    Raises:
        InspectnetError: ``--val-fraction`` is not between 0 and 1, ``--limit`` is below 2, or ``--model``
            comes without ``--layer``.
    """
    from inspectnet.analysis.san.activations import ACTIVATIONS
    from inspectnet.analysis.san.model import images_tensor, layer_maps, san_select, save_kernel_picture
    from inspectnet.core.errors import InspectnetError
    from inspectnet.data import load_data

    if not 0 < args.val_fraction < 1:
        raise InspectnetError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
    if args.limit < 2:
        raise InspectnetError(f"--limit must be at least 2 (training and validation samples), got {args.limit}")
    check_output_dir(args.out)
    if args.model:
        from inspectnet.models.zoo import load_model

        if not args.layer:
            raise InspectnetError("--model needs --layer (the layer whose maps SAN learns)")
        zm = load_model(args.model)
        x = layer_maps(zm, load_data(args.data, zm.transform()), args.layer, limit=args.limit,
                       channels=args.channels)
    else:
        x = images_tensor(load_data(args.data), args.limit)
    n_val = max(1, int(round(len(x) * args.val_fraction)))
    names = [a.strip() for a in args.activation.split(",")] if args.activation else list(ACTIVATIONS)
    result = san_select(x[:-n_val], x[-n_val:], names,
                        args.kernel_sizes, kernels=args.kernels, epochs=args.epochs, k=args.k, seed=args.seed,
                        lr=args.lr)
    out = output_dir(args.out)
    result.save(out / "san.json")
    atomic_write_text(out / "san.md", result.table() + "\n")
    save_kernel_picture(result, out / "kernels.png")
    emit(result.to_dict(), args.json, result.table() + f"\nwrote {out}/san.json, san.md, kernels.png")
    return 0
