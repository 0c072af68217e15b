"""Studies (docs/STUDIES.md): a grid of parameter overrides declared in conf
(``studies.<name>``, conf/base/parameters_studies.yml), each point its own
run under its own data root, resumable, and a report with the FID /
retention-of-absent-attributes trade-off and its Pareto front.

``python -m diffusion_transfer.studies run <name> [--env ENV]`` runs one.
"""

from diffusion_transfer.studies.report import pareto_front, write_study_report
from diffusion_transfer.studies.runner import run_study
from diffusion_transfer.studies.spec import Point, study_points

__all__ = ["Point", "pareto_front", "run_study", "study_points", "write_study_report"]
