#!/bin/sh
# The return route nginx's `proxy_bind $remote_addr transparent` needs when sticky runs on the
# same host (as in nginx's "IP Transparency" guide): sticky's workers answer a client address
# that is not local, so their packets would leave by the default route. Mark what leaves sticky's
# port and route marked packets to lo, where nginx's transparent socket takes them.
#
#   transparent-routing.sh PORT [MARK] [TABLE]     (as root; PORT is sticky's listen port)
set -eu
port=${1:?usage: transparent-routing.sh PORT [MARK] [TABLE]}
mark=${2:-1}
table=${3:-100}

nft -f - <<NFT
table ip sticky_transparent {
    chain output {
        type route hook output priority mangle; policy accept;
        tcp sport $port meta mark set $mark
    }
}
NFT
ip rule add fwmark "$mark" lookup "$table"
ip route add local 0.0.0.0/0 dev lo table "$table"
