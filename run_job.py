#!/usr/bin/env python3
"""Run an allow-listed job: ``python run_job.py module:Class method [p1,p2,...]``.

A thin shim over ``bgrunner.job.main`` so the job path stays importable and tested.
"""

import os
import sys

if __name__ == "__main__":
    # Jobs name modules relative to the project (e.g. ``examples.jobs``), as the PHP
    # original's classes were; the current directory comes first on the import path.
    sys.path.insert(0, os.getcwd())
    from bgrunner.job.main import main

    sys.exit(main())
