#!/usr/bin/env bash
# The fault-schedule test (service/tests/it/faults.rs) for longer than make test runs it, with a
# seed from the environment (FAULTS_SEED, default: the clock) and a length (FAULTS_SECS, default
# 120). Prints the seed, the schedule, the writes and their outcomes, and the checker's verdict;
# a failing run names its seed and the first broken rule (rerun with FAULTS_SEED=<seed>).
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${FAULTS_SEED:-$(date +%s)}
secs=${FAULTS_SECS:-120}
echo "fault schedule: seed $seed, $secs s (FAULTS_SEED=$seed FAULTS_SECS=$secs to rerun)"
USERSVC_FAULT_SEED=$seed USERSVC_FAULT_SECS=$secs \
  cargo test -q -p service --test it -- --nocapture --exact faults::a_seeded_fault_schedule_loses_no_acknowledged_write 2>&1 |
  grep -v '^{"timestamp' | grep -v '^$'
