#!/usr/bin/env bash
# Run the test suite. As root on a Debian machine it also installs and starts the
# single-node SLURM cluster (slurm/cluster.sh) for the SLURM tests, and stops it afterwards;
# elsewhere those tests are skipped with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
started=0
if [ "${HARNESS_SLURM:-auto}" != "0" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  if bash slurm/cluster.sh install && bash slurm/cluster.sh start; then
    started=1
  else
    echo "warning: could not start the local SLURM cluster; SLURM tests will be skipped" >&2
  fi
fi
python -m pytest "$@"
rc=$?
if [ "$started" = "1" ]; then bash slurm/cluster.sh stop || true; fi
exit $rc
