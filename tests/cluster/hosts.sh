# shellcheck shell=bash
# Hosts inside one machine, for the cluster tests: each "host" is a network namespace with its own
# address and a UTS namespace with its own hostname, all linked through a bridge that lives in a
# namespace of its own (the machine's own network is never touched and never reached). Sourced by
# tests/cluster/run and scripts/slurm/selftest --nodes 2; needs root and Debian's iproute2.
#
#   hosts_up PREFIX N    N hosts, node1..nodeN at $HOSTS_NET.1..N, namespaces PREFIX-node1.., a
#                        bridge namespace PREFIX-switch; state (UTS files, the agent's map) in
#                        $HOSTS_DIR. Names are kept short: a veth name holds 15 characters.
#   on HOST CMD...       runs CMD on HOST (its network, its hostname), in the foreground
#   host_addr HOST       the host's address
#   host_pids HOST       the processes inside HOST's network namespace
#   kill_host HOST       SIGKILL to every process on HOST: the whole host dies at once
#   hosts_down           kills every process on the hosts, deletes the namespaces and links,
#                        unmounts the UTS files; safe to call twice and after a partial hosts_up
#   hosts_leftovers PREFIX  prints what of PREFIX's hosts still exists (namespaces, links, mounts)
#
# mpirun reaches the hosts through tests/cluster/agent, its stand-in for ssh (plm_rsh_agent):
# it enters the named host's namespaces instead of logging in. HOSTS_DIR/map lists
# "NAME ADDRESS NETNS UTSFILE" per host, for the agent.

HOSTS_NET=${HOSTS_NET:-10.211.0} # a /24 that exists only on the bridge of our own namespaces
HOSTS_PREFIX=""
HOSTS_N=0

hosts_up() {
    local prefix=$1 n=$2 i ns
    HOSTS_PREFIX=$prefix
    HOSTS_N=$n
    : "${HOSTS_DIR:?set HOSTS_DIR to a directory for the hosts state}"
    : >"$HOSTS_DIR/map"
    ip netns add "$prefix-switch" || return 1
    ip -n "$prefix-switch" link set lo up &&
        ip -n "$prefix-switch" link add br0 type bridge &&
        ip -n "$prefix-switch" link set br0 up || return 1
    for i in $(seq "$n"); do
        ns=$prefix-node$i
        ip netns add "$ns" || return 1
        # The pair is made in the host's namespace, so that no link ever appears in the machine's.
        ip -n "$ns" link add eth0 type veth peer name "port$i" netns "$prefix-switch" &&
            ip -n "$prefix-switch" link set "port$i" master br0 up &&
            ip -n "$ns" link set lo up &&
            ip -n "$ns" addr add "$HOSTS_NET.$i/24" dev eth0 &&
            ip -n "$ns" link set eth0 up || return 1
        # A UTS namespace kept alive by a bind mount on a file, with the host's own hostname.
        : >"$HOSTS_DIR/uts$i"
        unshare --uts="$HOSTS_DIR/uts$i" hostname "node$i" || return 1
        echo "node$i $HOSTS_NET.$i /run/netns/$ns $HOSTS_DIR/uts$i" >>"$HOSTS_DIR/map"
    done
    # Wait until every host answers node1 (a refused connection is an answer): the links are up.
    for i in $(seq "$n"); do
        for _ in $(seq 50); do
            on node1 timeout 1 bash -c "exec 3<>/dev/tcp/$HOSTS_NET.$i/9" 2>&1 | grep -q refused && break
            sleep 0.1
        done
    done
}

host_field() { # HOST FIELD (2 address, 3 netns, 4 UTS file)
    awk -v h="$1" -v f="$2" '$1 == h { print $f }' "$HOSTS_DIR/map"
}

host_addr() { host_field "$1" 2; }

on() {
    local host=$1 net uts
    shift
    net=$(host_field "$host" 3)
    uts=$(host_field "$host" 4)
    [ -n "$net" ] || { echo "on: no host $host" >&2; return 2; }
    nsenter --net="$net" --uts="$uts" "$@"
}

host_pids() { ip netns pids "$HOSTS_PREFIX-${1}" 2>/dev/null; }

kill_host() {
    local pids
    pids=$(host_pids "$1")
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
}

hosts_down() {
    local i ns pids
    [ -n "$HOSTS_PREFIX" ] || return 0
    for i in $(seq "$HOSTS_N"); do
        ns=$HOSTS_PREFIX-node$i
        # Killed twice: a process forked while the first kill ran is caught by the second.
        for _ in 1 2; do
            pids=$(ip netns pids "$ns" 2>/dev/null)
            # shellcheck disable=SC2086
            [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
            sleep 0.1
        done
        ip netns del "$ns" 2>/dev/null
        umount "$HOSTS_DIR/uts$i" 2>/dev/null
    done
    ip netns del "$HOSTS_PREFIX-switch" 2>/dev/null
    HOSTS_PREFIX=""
}

hosts_leftovers() {
    local prefix=$1
    ip netns list 2>/dev/null | awk '{ print $1 }' | grep "^$prefix-" | sed 's/^/namespace /'
    ip -o link show 2>/dev/null | grep -F -- "$prefix" | sed 's/^/link /'
    grep -F -- "$prefix" /proc/self/mountinfo | awk '{ print "mount " $5 }'
}
