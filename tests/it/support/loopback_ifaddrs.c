/* getifaddrs() as if loopback's IPv4 address were an ordinary interface, and the only one:
 * every other entry keeps its place in the list (glibc frees the list as one block) but loses
 * its address, which callers skip.
 *
 * Janus 1.1.2 (and libnice under it) leave loopback out when they gather ICE candidates,
 * whatever ice_enforce_list says; the tests preload this (LD_PRELOAD) so that a Janus on
 * 127.0.0.1 offers 127.0.0.1, and never an address of another interface. Built by
 * tests/it/support/janus.rs with the machine's C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

int getifaddrs(struct ifaddrs **out) {
    int (*real)(struct ifaddrs **) = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    if (real == NULL) return -1;
    int rc = real(out);
    if (rc != 0) return rc;
    for (struct ifaddrs *ifa = *out; ifa != NULL; ifa = ifa->ifa_next) {
        int loopback_v4 = ifa->ifa_name != NULL && strcmp(ifa->ifa_name, "lo") == 0 &&
                          ifa->ifa_addr != NULL && ifa->ifa_addr->sa_family == AF_INET;
        if (loopback_v4) {
            ifa->ifa_flags &= ~IFF_LOOPBACK;
        } else {
            ifa->ifa_addr = NULL;
            ifa->ifa_netmask = NULL;
            ifa->ifa_flags &= ~IFF_UP;
        }
    }
    return 0;
}
