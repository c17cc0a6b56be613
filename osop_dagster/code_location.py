"""The code location that ``workspace.yaml`` loads: every workflow of one folder.

The folder is ``OSOP_WORKFLOWS_DIR`` when set, else ``workflows/`` in the working directory
(``workspace.yaml`` sets that to the project folder).
"""

import os

from osop_dagster import constants
from osop_dagster.definitions import build_osop_definitions

defs = build_osop_definitions(os.environ.get(constants.ENV_WORKFLOWS_DIR) or "workflows")
