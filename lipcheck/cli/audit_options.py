"""The flags of `lipcheck audit` alone, as `Annotated` aliases (those it shares are in `options.py`).

The audit takes more flags than any other command: what to load, how to solve, what to search and
bound, how to shard and resume. Declared here, the command's signature is one line per flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lipcheck.cli.options import remember_quiet
from lipcheck.options.choices import Device, Dtype, Method, Operator, Product, Reduction

ModelArgument = Annotated[
    list[Path] | None,
    typer.Argument(
        metavar="MODEL",
        help="Model file: .pt2 (torch.export), TorchScript, ONNX, .safetensors or a state dict with --arch, "
        "or a pickled module with --trust-pickle. Detected from the file's content. Several (a training "
        "run's checkpoints, ckpt/*.pt) make a series audit. Without it, --arch alone gives the module its "
        "factory returns.",
        show_default=False,
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Data: .npy (memory-mapped), .npz, .pt (a tensor or dict of tensors), .safetensors, "
        "or a folder of PNG/JPEG images. The first dimension indexes the samples.",
        show_default=False,
    ),
]
RandomOption = Annotated[
    str | None,
    typer.Option(
        "--random",
        help="Audit standard normal samples of this shape (without the batch), e.g. 20 or 3x32x32, "
        "instead of --data; needs --num-samples; seeded by --seed.",
        metavar="SHAPE",
        show_default=False,
    ),
]
NumSamplesOption = Annotated[
    int | None,
    typer.Option("--num-samples", min=1, help="Number of --random samples.", show_default=False),
]
DataKeyOption = Annotated[
    str | None,
    typer.Option(
        "--data-key", help="The array to audit in a data file that holds several.", show_default=False
    ),
]
LimitOption = Annotated[
    int | None,
    typer.Option("--limit", min=1, help="Audit only the first N samples.", metavar="N", show_default=False),
]
MaxReadBytesOption = Annotated[
    int,
    typer.Option(
        "--max-read-bytes",
        min=1,
        help="The largest array read whole into memory, as the file declares it: an .npz member, a legacy "
        ".pt file, a .pt tensor whose strides repeat its storage (a .npy file is memory-mapped instead). "
        "Larger ones, and zip bombs, are refused before reading; the other limits: docs/limits.md.",
        metavar="BYTES",
    ),
]
OutputKeyOption = Annotated[
    str | None,
    typer.Option(
        "--output-key",
        help="The output to audit when the model returns a dict (a key) or a tuple (an index).",
        show_default=False,
    ),
]
OperatorOption = Annotated[
    Operator,
    typer.Option(
        "--operator",
        help="Whose Jacobian to measure: the model f (J), fne: 2f - Id (2J - I; f is firmly nonexpansive "
        "at a sample iff its sigma <= 1), or residual: Id - f (I - J). fne and residual need an output "
        "of the input's shape; --bound and --search-steps then concern the same operator.",
    ),
]
ProductOption = Annotated[
    Product,
    typer.Option(
        "--product",
        help="How J u is computed: double-backward (through the model's one call per batch), forward "
        "(forward-mode AD, one more model call per product), or auto: double backward, else forward mode "
        "where it cannot differentiate the model, chosen at the first batch.",
    ),
]
MethodOption = Annotated[Method, typer.Option("--method", help="Solver: Lanczos or power iteration.")]
TolOption = Annotated[float, typer.Option("--tol", help="Target relative accuracy of each sigma.")]
ConfidenceOption = Annotated[
    float,
    typer.Option(
        "--confidence",
        help="Probability with which each row's sigma_upper bounds the exact norm from above "
        "(over the random start vector).",
    ),
]
MaxIterOption = Annotated[int, typer.Option("--max-iter", min=1, help="Most products with J^T J per sample.")]
SeedOption = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of the start vector and of --random data.")
]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", "-b", min=1, help="Samples per model call; bounds the memory.")
]
DeviceOption = Annotated[Device, typer.Option("--device", help="auto: CUDA when available, else the CPU.")]
DtypeOption = Annotated[Dtype, typer.Option("--dtype", help="Precision of the model and the data.")]
ReductionOption = Annotated[
    Reduction, typer.Option("--reduction", help="How sigma over the samples reduces to one value.")
]
SearchStepsOption = Annotated[
    int | None,
    typer.Option(
        "--search-steps",
        help="Worst-case search: from each sample, N steps of projected gradient ascent of sigma within "
        "--search-radius; rows add search_sigma and search_distance, and the summary's max counts them.",
        metavar="N",
        show_default=False,
    ),
]
SearchRadiusOption = Annotated[
    float | None,
    typer.Option(
        "--search-radius",
        help="The l2 radius R of the worst-case search around each sample (with --search-steps).",
        metavar="R",
        show_default=False,
    ),
]
WithBoundOption = Annotated[
    bool,
    typer.Option(
        "--bound",
        help="Also certify an upper bound on the Lipschitz constant at the data's sample shape (as "
        "`lipcheck bound`) and report the bracket [max found, upper bound].",
    ),
]
AuditAssumeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--assume",
        help="With --bound: a Lipschitz constant L for an operation lipcheck has no rule for, OP=L "
        "(repeatable); you take responsibility for it, and the report records it.",
        metavar="OP=L",
        show_default=False,
    ),
]
SaveDirectionsOption = Annotated[
    Path | None,
    typer.Option(
        "--save-directions",
        help="Write each sample's most amplified unit input direction to FILE.safetensors: 'directions' "
        "(N, ...) like the data, largest sigma first, with 'indices', 'sigma' and 'residual' (N,) alongside.",
        metavar="FILE.safetensors",
        show_default=False,
    ),
]
DirectionsTopOption = Annotated[
    int | None,
    typer.Option(
        "--top",
        min=1,
        help="With --save-directions: keep only the K samples of largest sigma (memory and file of K rows).",
        metavar="K",
        show_default=False,
    ),
]
AuditQuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", callback=remember_quiet, help="No progress bar, notes or warnings on stderr."
    ),
]


WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Audit with N processes on this machine, each a shard of whole batches (torchrun "
        "--standalone --nproc-per-node N, one thread each); one report, the same rows as one process.",
        metavar="N",
        show_default=False,
    ),
]
ResumeOption = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Keep a progress journal in folder DIR (created; fsync'd after every batch) and continue the "
        "audit it holds: rerun the same command after a kill. A journal of another audit is refused.",
        metavar="DIR",
        show_default=False,
    ),
]
WorkerTimeoutOption = Annotated[
    float,
    typer.Option(
        "--worker-timeout",
        help="Under torchrun or --workers: seconds a rank waits for the others at a batch before the "
        "audit fails (a rank died or hangs).",
        metavar="SECONDS",
    ),
]
