#!/bin/bash
# The meta-parameters and optimizer state after N iterations are bit-identical at 1, 2, 3 and 4
# ranks, for every algorithm and both outer optimizers (the reproducible allreduce at work).
. "$(dirname "$0")/lib.sh"

run() { # run NAME R ARGS...
    name=$1 ranks=$2
    shift 2
    mpi "$ranks" train "$@" --set "output.dir=$name-r$ranks" --quiet || fail "$name at $ranks ranks exited $?"
}

# The benchmark configs at every rank count; meta_batch 25 does not divide by 2, 3 or 4.
for cfg in sinusoid-maml sinusoid-metasgd; do
    for r in 1 2 3 4; do run "$cfg" "$r" "$CONFIGS/$cfg.ini" --set train.iterations=40; done
    for r in 2 3 4; do same_model "$cfg-r1/checkpoint.h5" "$cfg-r$r/checkpoint.h5"; done
done

# Episodes of images whose training images move (omniglot-5w1s.ini: task.augment_shift = 2): the
# shifts come from each task's own keyed stream, so any rank draws the same ones.
prototype_images
for r in 1 3; do
    run omniglot-shift "$r" "$CONFIGS/omniglot-5w1s.ini" --set task.path=images.h5 --set train.iterations=6 \
        --set train.meta_batch=7 --set eval.every=0 \
        --set "model.spec=$TINY_CLASSIFIER_SPEC"
done
same_model omniglot-shift-r1/checkpoint.h5 omniglot-shift-r3/checkpoint.h5

# Every algorithm with both optimizers, two inner steps, at 1 and 3 ranks; 7 tasks over 3 ranks.
for algo in maml fomaml metasgd anil mamlpp reptile imaml mamlpp-metasgd; do
    for opt in adam sgd; do
        args=(--set train.iterations=12 --set train.meta_batch=7 --set meta.algorithm=$algo
              --set meta.optimizer=$opt --set meta.inner_steps=2 --set meta.msl_iterations=5
              --set meta.first_order_iterations=4 --set meta.cg_steps=3 --set meta.clip_norm=5)
        run "$algo-$opt" 1 "${args[@]}"
        run "$algo-$opt" 3 "${args[@]}"
        same_model "$algo-$opt-r1/checkpoint.h5" "$algo-$opt-r3/checkpoint.h5"
    done
done
pass
