/* Out-of-line wrappers for DPDK's static inline datapath functions. */
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include "shim.h"

int ft_rte_errno(void) { return rte_errno; }

uint16_t ft_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t ft_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

const uint8_t *ft_mbuf_data(const struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, const uint8_t *);
}

uint16_t ft_mbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }

uint32_t ft_mbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }

uint64_t ft_mbuf_ol_flags(const struct rte_mbuf *m) { return m->ol_flags; }

int ft_mbuf_mark(const struct rte_mbuf *m, uint32_t *mark)
{
	if (!(m->ol_flags & RTE_MBUF_F_RX_FDIR_ID))
		return 0;
	*mark = m->hash.fdir.hi;
	return 1;
}

void ft_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

struct rte_mbuf *ft_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

uint8_t *ft_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return (uint8_t *)rte_pktmbuf_append(m, len);
}
