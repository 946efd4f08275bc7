"""``refdcn vectors export DIR`` / ``refdcn vectors check DIR OUTPUTS``: golden test vectors.

``export`` writes every conformance case as ``.npz`` + a JSON manifest, and in
the ONNX backend-test layout (``model.onnx`` + ``test_data_set_0/*.pb``).
``check`` compares the outputs another program wrote (``<case>.npy`` or
``<case>.npz``) and prints the same report as ``refdcn verify``.  Every case
of the manifest is checked: a case without outputs is listed as missing and
fails the run unless ``--allow-missing``; a case needs its output, and if the
outputs have gradients, every gradient the case defines.

Exit status of ``check``: 0 every case passes; 1 a case fails, errors or is
missing; 2 a usage error (DIR or OUTPUTS wrong, no output at all); 3 a data
error (a malformed manifest, case file or outputs file).
"""

import os

from .. import api, conformance

HELP = "write golden test vectors (npz, JSON, ONNX test layout), or check outputs against them"


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    exp = sub.add_parser("export", help="write every case to DIR",
                         description="Write every conformance case to DIR: cases/<case>.npz, "
                                     "manifest.json, onnx/<case>/ and onnx_float32/<case>/ in "
                                     "the ONNX backend-test layout.")
    exp.add_argument("directory", metavar="DIR")
    exp.add_argument("--case", action="append", metavar="TEXT",
                     help="only cases whose name contains TEXT (repeatable)")
    exp.add_argument("--no-onnx", action="store_true", help="skip the ONNX layout")
    exp.add_argument("--op", choices=["deform_conv2d", "dcnv3", "dcnv4"], default="deform_conv2d",
                     help="operator (default deform_conv2d); dcnv3/dcnv4 write "
                          "refdcn.vectors_dcnv34's cases, ONNX as a custom-domain node")
    exp.add_argument("--opset", type=int, default=19, choices=[19, 22],
                     help="ONNX opset of the DeformConv models (default 19)")
    chk = sub.add_parser("check", help="compare another program's outputs with DIR",
                         description="Compare the outputs another program wrote for the cases "
                                     "of DIR: OUTPUTS/<case>.npy (output) or OUTPUTS/<case>.npz "
                                     "(output, grad_input, grad_offset, grad_mask, grad_weight, "
                                     "grad_bias), or one .npz with keys <case> and "
                                     "<case>/<key>. Exit status: 0 every case passes, 1 a "
                                     "case fails, errors or is missing, 2 a usage error, 3 a "
                                     "malformed file.")
    chk.epilog = ("exit status: 0 every case passes; 1 a case fails, errors or is missing; 2 a "
                  "usage error; 3 a malformed manifest, case or outputs file")
    chk.add_argument("directory", metavar="DIR")
    chk.add_argument("outputs", metavar="OUTPUTS")
    chk.add_argument("--dtype", choices=["auto", "float64", "float32"], default="auto",
                     help="precision the program computed in (default: its arrays' dtype)")
    chk.add_argument("--convention", choices=sorted(api.CONVENTIONS), default="torchvision",
                     help="offset-gradient convention to compare with (default torchvision)")
    chk.add_argument("--case", action="append", metavar="TEXT",
                     help="only cases whose name contains TEXT (repeatable)")
    chk.add_argument("--rtol", type=float, metavar="R",
                     help="pass when the normwise relative error <= R (default: 1e-12 for "
                          "float64, the derived float32 bounds for float32)")
    chk.add_argument("--strict", action="store_true",
                     help="float32: the strict bounds (coordinates formed in double precision) "
                          "instead of the default tier")
    chk.add_argument("--allow-missing", action="store_true",
                     help="cases without outputs do not fail the run (they are still listed)")
    chk.add_argument("--json", action="store_true", help="print a JSON report")
    chk.add_argument("--op", choices=["deform_conv2d", "dcnv3", "dcnv4"], default="deform_conv2d",
                     help="operator of DIR's vectors (default deform_conv2d)")
    chk.add_argument("--verbose", action="store_true", help="describe failing cases in full")


def run(args):
    from ..cli import DataError, UsageError
    from .. import vectors
    if getattr(args, "op", "deform_conv2d") != "deform_conv2d":
        from ..vectors_dcnv34 import run_command
        return run_command(args)
    if args.action == "export":
        cases = conformance.select(args.case)
        if not cases:
            raise UsageError(f"no conformance case matches {args.case}")
        try:
            manifest = vectors.export(args.directory, cases, onnx=not args.no_onnx,
                                      opset=args.opset)
        except (ImportError, OSError) as exc:
            raise UsageError(str(exc)) from None
        n_onnx = sum(e["onnx"] is not None for e in manifest["cases"])
        print(f"wrote {len(manifest['cases'])} cases to {args.directory}: "
              f"{vectors.MANIFEST}, cases/*.npz"
              + (f", onnx/ and onnx_float32/ ({n_onnx} cases, opset {args.opset})"
                 if n_onnx else ""))
        for e in manifest["cases"]:
            if e["onnx_omitted"] and not args.no_onnx:
                print(f"  not in the ONNX layout: {e['name']}: {e['onnx_omitted']}")
        return 0
    if args.action == "check":
        from ..verify.report import format_json, format_text
        if not os.path.isdir(args.directory):
            raise UsageError(f"DIR {args.directory!r} is not a directory")
        if args.rtol is not None and not args.rtol >= 0:
            raise UsageError(f"--rtol must be a non-negative number; got {args.rtol}")
        try:
            report = vectors.check(args.directory, args.outputs,
                                   None if args.dtype == "auto" else args.dtype,
                                   args.convention, args.rtol, args.case,
                                   allow_missing=args.allow_missing, strict=args.strict)
        except vectors.DataError as exc:
            raise DataError(str(exc)) from None
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from None
        print(format_json(report) if args.json else format_text(report, args.verbose))
        return report.exit_code()
    raise UsageError("ACTION is required: refdcn vectors export DIR | "
                     "refdcn vectors check DIR OUTPUTS")
