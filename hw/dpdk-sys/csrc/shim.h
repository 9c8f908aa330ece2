/* Out-of-line wrappers for DPDK's static inline functions and
 * thread-local variables, which bindgen can't link to. */
#ifndef FLOWTABLE_DPDK_SHIM_H
#define FLOWTABLE_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

int ft_rte_errno(void);
uint16_t ft_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t ft_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
const uint8_t *ft_mbuf_data(const struct rte_mbuf *m);
uint16_t ft_mbuf_data_len(const struct rte_mbuf *m);
uint32_t ft_mbuf_pkt_len(const struct rte_mbuf *m);
uint64_t ft_mbuf_ol_flags(const struct rte_mbuf *m);
/* The MARK action's id when the NIC set one (RTE_MBUF_F_RX_FDIR_ID), and
 * whether it did. */
int ft_mbuf_mark(const struct rte_mbuf *m, uint32_t *mark);
void ft_pktmbuf_free(struct rte_mbuf *m);
struct rte_mbuf *ft_pktmbuf_alloc(struct rte_mempool *mp);
/* Appends len bytes to an mbuf; NULL when it has no room. */
uint8_t *ft_pktmbuf_append(struct rte_mbuf *m, uint16_t len);

#endif
