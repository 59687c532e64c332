#!/usr/bin/env python3
"""Run an allow-listed job: ``python run_job.py module:Class method [p1,p2,...]``.

A thin shim over ``bgrunner.job.main`` so the job path stays importable and tested.
"""

import sys

if __name__ == "__main__":
    # Jobs name modules relative to the project (e.g. ``examples.jobs``), as the PHP
    # original's classes were: the job's own import path is set when its class is
    # loaded (``[runner] import_root``, else the current directory first), not here,
    # so nothing planted in the current directory can stand in for bgrunner itself.
    from bgrunner.job.main import main

    sys.exit(main())
