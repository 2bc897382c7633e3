#!/bin/sh
# Several sticky hosts behind an L4 balancer that keeps client addresses, on one machine
# (docs/deployment.md, "Several hosts"). Every "host" is a network namespace running its own
# sticky; a gateway namespace balances with the kernel's nftables:
#
#   dnat to jhash ip saddr mod 256 seed $SEED map @buckets
#
# where the 256 buckets are filled like sticky's own table (`sticky inspect-table`), so draining
# a host rewrites only its buckets and moves only its clients. Clients live in a client
# namespace, at any address of 10.31.0.0/16, and connect to the service address 10.32.0.100:8080.
# Every address here exists only inside these namespaces.
#
#   cluster.sh up [HOSTS]        namespaces, links, routes, the balancer, buckets for all hosts (3)
#   cluster.sh serve [WORKERS]   start sticky in every host (background; logs in $STATE)
#   cluster.sh drain [HOST...]   refill the buckets without these hosts (none: all hosts again)
#   cluster.sh buckets           print the bucket map ("BUCKET HOST-ADDRESS" lines)
#   cluster.sh down              stop what `serve` started, delete the namespaces
#
# Then, e.g.:  ip netns exec sticky-client curl --interface 10.31.4.2 http://10.32.0.100:8080/
#
# Environment: CLUSTER (namespace prefix, default "sticky"), STICKY (the sticky binary, default
# `sticky` on PATH), SEED (the balancer's seed, for both jhash and the table; keep it fixed, so
# reloading the ruleset maps every client as before), STATE (serve's logs, default /tmp/$CLUSTER).
# Needs root, iproute2 and nftables.
set -eu

CLUSTER=${CLUSTER:-sticky}
STICKY=${STICKY:-sticky}
SEED=${SEED:-0x5717c4}
STATE=${STATE:-/tmp/$CLUSTER}
VIP=10.32.0.100
PORT=8080
BUCKETS=256

gw="$CLUSTER-gw"
client="$CLUSTER-client"

# The hosts' namespaces, in order.
hosts() {
    ip netns list | sed -n "s/^$CLUSTER-h\([0-9]*\)\( .*\)\{0,1\}$/\1/p" | sort -n |
        sed "s/^/$CLUSTER-h/"
}

host_count() {
    hosts | wc -l
}

# The address of host $1 (on its link to the gateway).
host_addr() {
    echo "10.40.$1.2"
}

up() {
    count=${1:-3}
    ip netns add "$client"
    ip netns add "$gw"
    for ns in "$client" "$gw"; do ip -n "$ns" link set lo up; done
    ip netns exec "$gw" sysctl -q -w net.ipv4.ip_forward=1

    # client <-> gateway; every address of 10.31.0.0/16 is the client namespace's own.
    ip -n "$client" link add gw type veth peer name client netns "$gw"
    ip -n "$client" addr add 10.30.0.2/24 dev gw
    ip -n "$gw" addr add 10.30.0.1/24 dev client
    ip -n "$client" link set gw up
    ip -n "$gw" link set client up
    ip -n "$client" route add local 10.31.0.0/16 dev lo
    ip -n "$client" route add default via 10.30.0.1
    ip -n "$gw" route add 10.31.0.0/16 via 10.30.0.2

    # gateway <-> each host
    i=0
    while [ "$i" -lt "$count" ]; do
        ns="$CLUSTER-h$i"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$gw" link add "h$i" type veth peer name gw netns "$ns"
        ip -n "$gw" addr add "10.40.$i.1/24" dev "h$i"
        ip -n "$ns" addr add "$(host_addr "$i")/24" dev gw
        ip -n "$gw" link set "h$i" up
        ip -n "$ns" link set gw up
        ip -n "$ns" route add default via "10.40.$i.1"
        i=$((i + 1))
    done

    # The balancer: the client's address picks a bucket, the bucket a host. The clients keep
    # their addresses (DNAT only changes the destination), so each host's sticky sees them.
    ip netns exec "$gw" nft -f - <<NFT
table ip sticky_lb {
    map buckets {
        typeof jhash ip saddr mod $BUCKETS : ip daddr
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $VIP tcp dport $PORT dnat to jhash ip saddr mod $BUCKETS seed $SEED map @buckets
    }
}
NFT
    drain
}

# Fills the buckets as sticky fills its table for the hosts, without those named: a host's
# buckets are the first $BUCKETS entries of `sticky inspect-table`. Taking hosts out changes
# only their buckets. One nft transaction: no packet sees a half-written map.
drain() {
    without=""
    for host in "$@"; do without="$without --without $host"; done
    # shellcheck disable=SC2086 # one word per flag
    table=$("$STICKY" inspect-table --slots "$(host_count)" --seed "$((SEED))" \
        --entries "$BUCKETS" $without | sed -n 's/.*"table":\[\([0-9,]*\)\].*/\1/p')
    [ -n "$table" ] || { echo "cluster.sh: $STICKY inspect-table gave no table" >&2; exit 1; }
    elements=$(echo "$table" | tr ',' '\n' | awk '{ printf "%s%d : 10.40.%d.2", (NR > 1 ? ", " : ""), NR - 1, $1 }')
    ip netns exec "$gw" nft -f - <<NFT
flush map ip sticky_lb buckets
add element ip sticky_lb buckets { $elements }
NFT
}

# The bucket map, one "BUCKET HOST-ADDRESS" a line. (From nft's JSON: nft 1.0.6, Debian 12's,
# crashes listing a `typeof jhash` map as text.)
buckets() {
    ip netns exec "$gw" nft -j list map ip sticky_lb buckets |
        grep -o '\[[0-9]*, "[0-9.]*"\]' | tr -d '[]",'
}

serve() {
    workers=${1:-2}
    mkdir -p "$STATE"
    for ns in $(hosts); do
        ip netns exec "$ns" "$STICKY" run --listen "0.0.0.0:$PORT" --workers "$workers" \
            --user nobody --state-dir "$STATE/$ns" --control "$STATE/$ns.sock" \
            >"$STATE/$ns.log" 2>&1 &
    done
}

down() {
    for ns in $(hosts); do
        # What `serve` started there (nothing else runs in a namespace this script made).
        pids=$(ip netns pids "$ns")
        [ -z "$pids" ] || kill $pids
    done
    # sticky stops its workers first (within their grace period): wait for them, at most 15 s.
    for ns in $(hosts); do
        tries=0
        while [ -n "$(ip netns pids "$ns")" ] && [ "$tries" -lt 150 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
    done
    for ns in $(hosts) "$gw" "$client"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}

command=${1:-}
[ $# -eq 0 ] || shift
case "$command" in
up) up "$@" ;;
serve) serve "$@" ;;
drain) drain "$@" ;;
buckets) buckets ;;
down) down ;;
*)
    echo "usage: cluster.sh up [HOSTS] | serve [WORKERS] | drain [HOST...] | buckets | down" >&2
    exit 2
    ;;
esac
