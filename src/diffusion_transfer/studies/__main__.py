"""``python -m diffusion_transfer.studies``: list, run and report studies.

    python -m diffusion_transfer.studies list [--env ENV]
    python -m diffusion_transfer.studies run NAME [--env ENV] [--points ID,ID] [--in-process]
    python -m diffusion_transfer.studies report NAME [--env ENV]
    python -m diffusion_transfer.studies compare NAME [NAME ...] [--reference naive] [--as NAME] [--env ENV]

``run`` runs the points not done yet, each in its own process, and rewrites
the study's report after each one; interrupted, it resumes where it stopped.
``compare`` pools the done runs of several studies and sets each against the
best the reference method keeps at an equal or better FID (``compare.py``).
Failures end in one ``Error:`` line naming the study, point or parameter.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from diffusion_transfer.project.schema import InvalidParametersError
from diffusion_transfer.studies.compare import write_comparison
from diffusion_transfer.studies.report import write_study_report
from diffusion_transfer.studies.runner import declared_studies, execute_point, is_done, points_of, run_study


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion_transfer.studies", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (("list", "the declared studies and their points"), ("run", "run a study's points"),
                          ("report", "rewrite a study's report from the points done"),
                          ("compare", "the done runs of several studies against a reference method at equal "
                                      "or better FID")):
        p = sub.add_parser(command, help=text)
        if command == "compare":
            p.add_argument("names", nargs="+", metavar="name")
            p.add_argument("--reference", default="naive", help="the reference method (default: naive)")
            p.add_argument("--as", dest="out", default="comparison",
                           help="folder under the studies root to write to (default: comparison)")
        elif command != "list":
            p.add_argument("name")
        p.add_argument("--env", default=None, help="Kedro environment (default: local over base)")
        p.add_argument("--project", default=".", help="project folder (default: the current one)")
        if command == "run":
            p.add_argument("--points", default=None, help="only these point ids, comma-separated")
            p.add_argument("--in-process", action="store_true", help="run the points in this process")
    point = sub.add_parser("point", help=argparse.SUPPRESS)  # one point, in its own process (runner.run_point)
    point.add_argument("spec")
    return parser


def _list(project: Path, env: str | None) -> None:
    studies, _ = declared_studies(project, env)
    for name in sorted(studies):
        points, root = points_of(name, project, env)
        done = sum(is_done(root / p.id) for p in points)
        print(f"{name}: {len(points)} points, {done} done ({root})")
        for p in points:
            print(f"  {'[done] ' if is_done(root / p.id) else '       '}{p.id}  {p.pipeline}  {p.overrides}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "point":
            execute_point(Path(args.spec))
            return 0
        project = Path(args.project).resolve()
        if args.command == "list":
            _list(project, args.env)
        elif args.command == "run":
            only = [p for p in args.points.split(",") if p] if args.points else None
            print(run_study(args.name, project, args.env, in_process=args.in_process, only=only))
        elif args.command == "compare":
            studies = {name: points_of(name, project, args.env) for name in args.names}
            out = next(iter(studies.values()))[1].parent / args.out
            print(write_comparison(args.out, studies, args.reference, out))
        else:
            points, root = points_of(args.name, project, args.env)
            print(write_study_report(args.name, points, root))
    except (InvalidParametersError, RuntimeError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
