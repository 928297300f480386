"""Every figure of the analysis, drawn from its logged tables alone (`draw`), with the
drawing primitives (`plots`) and the forgetting and uncertainty figures.

    python -m bertrep.figures --run_id <analysis run> --out figures/
"""

from bertrep.figures.across import across_figures
from bertrep.figures.draw import draw_all, main, redraw

__all__ = ["across_figures", "draw_all", "main", "redraw"]
