# Sourced by the MNIST pipelines (which set DISTILL and RUNS).
# adversarial_stage CHAIN OUT DOUBLINGS...: the adversarial last stage (2 -> 1) from CHAIN's 2-step
# student, 600 steps into RUNS/OUT, then run longer: the LR is constant after warm-up, so resuming a
# copy of the shorter run with a larger step count continues it exactly (600 -> 1,200 -> 2,400 ...
# steps into OUT-1200, OUT-2400, ...). Every call resumes where a killed one stopped.
adversarial_stage() {
    local chain=$1 out=$2 previous="$RUNS/$2" longer steps
    shift 2
    $DISTILL --teacher "$RUNS/$chain/stage-3-2" --out "$previous" --schedule 2 1 --steps-per-stage 600 \
        --seed 3 --objective endpoint-l2-adversarial --resume
    for steps in "$@"; do
        longer="$RUNS/$out-$steps"
        [ -d "$longer" ] || cp -r "$previous" "$longer"
        $DISTILL --teacher "$RUNS/$chain/stage-3-2" --out "$longer" --schedule 2 1 \
            --steps-per-stage "$steps" --seed 3 --objective endpoint-l2-adversarial --resume
        previous=$longer
    done
}
