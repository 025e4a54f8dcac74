#!/bin/sh
# Every run behind docs/figures/*.png, then the figures. From the repository root: sh docs/figures/reproduce.sh
# (about 10 minutes on 2 CPU cores; needs the embedded MNIST LMDBs of `make data` in data/mnist/).
set -e
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/figures}
COMMON="--set max_iter=1000 --set test_interval=50 --set test_iter=10 --set display=25 --set random_seed=1701"
mkdir -p "$RUNS/teacher" "$RUNS/student"

# 1. The teacher: LeNet (Caffe's MNIST recipe), 1000 iterations of 64.
$PY -m pipeline train --solver solvers/lenet_solver.prototxt --no-progress $COMMON --set run="$RUNS/teacher"

# 2. The student alone: an MLP with one hidden layer of 100 units, 1000 iterations of 100, labels only.
$PY -m pipeline train --solver solvers/lenet_solver.prototxt --no-progress $COMMON --set run="$RUNS/student" \
    --set net=prototxt/mlp.prototxt --set 'hidden=[100]'

# 3. The teacher's weights renamed to the teacher-student net's teacher prefix (t_conv1, ...).
$PY tools/net_surgery.py --weights "$RUNS/teacher/lenet_iter_1000.caffemodel" --prefix t_ \
    --output "$RUNS/teacher_t.caffemodel"

# 4. The same student distilled from the frozen teacher (T = 4) for 11 soft-loss weights alpha (the study's
#    lambda; 1 - alpha weighs the labels), two runs at a time: a table, and every run's curves overlaid.
$PY tools/sweep.py --solver solvers/lenet_solver.prototxt --out "$RUNS/lambda" --jobs 2 \
    --grid alpha=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1 \
    --set net=docs/figures/ts_mnist.prototxt --set 'student_vars={"hidden":[100]}' --set temperature=4 \
    --set cache_teacher=true $COMMON --weights "$RUNS/teacher_t.caffemodel" \
    --phase test --outputs accuracy,hard_loss --title "MNIST: MLP-100 distilled from LeNet, T = 4, per alpha"

# 5. The figures, from the runs' logs.
$PY docs/figures/make_figures.py --runs "$RUNS" --out docs/figures
cp "$RUNS/lambda/sweep.md" docs/figures/mnist-lambda_table.md
cp "$RUNS/lambda/sweep.png" docs/figures/mnist-lambda_sweep.png
