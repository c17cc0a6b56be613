"""The code location that ``workspace.yaml`` loads: every workflow of one folder.

The folder is ``OSOP_WORKFLOWS_DIR`` when set, else ``workflows/`` in the working directory
(``workspace.yaml`` sets that to the project folder).
"""

import gc
import os

from osop_dagster import constants
from osop_dagster._heap import tune_cycle_collector
from osop_dagster.definitions import build_osop_definitions

defs = build_osop_definitions(os.environ.get(constants.ENV_WORKFLOWS_DIR) or "workflows")

# A code server keeps these definitions for as long as it lives. After one collection of what
# building them left behind, they are moved out of the cycle collector's sight: no later
# collection walks them again (at 200 workflows, a few hundred thousand objects; the collection
# at interpreter exit alone took 0.7 s), and forked workers share their pages untouched.
gc.collect()
tune_cycle_collector()
