#!/usr/bin/env python3
"""`make train` (no SOLVER given): the whole teacher-student story on MNIST:
`python tools/teacher_student_story.py --help`, or the `teacher_student_story` console script
(the tool is pipeline/cli/tools/teacher_student_story.py).
"""

import sys

from pipeline.cli.tools.teacher_student_story import main

if __name__ == "__main__":
    sys.exit(main())
