/* The DPDK headers flowtable binds to. rte_config.h first, as the
 * libdpdk pkg-config file asks with -include. */
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_flow.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_hash.h>
#include <rte_malloc.h>
#include "shim.h"
