// SPDX-License-Identifier: GPL-2.0
/*
 * The guest side of the real EPAM scenario: register one "virtio-mmio" platform device (a
 * MEM window and an IRQ) so the stock virtio_mmio driver probes it. Debian's kernel lacks
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so `virtio_mmio.device=` is not available.
 *
 *   insmod virtio_mmio_dev.ko base=0xfe000000 size=0x200 irq=5
 */
#include <linux/ioport.h>
#include <linux/module.h>
#include <linux/platform_device.h>

static unsigned long base = 0xfe000000;
static unsigned int size = 0x200;
static int irq = 5;
module_param(base, ulong, 0444);
module_param(size, uint, 0444);
module_param(irq, int, 0444);

static struct platform_device *pdev;

static int __init xvt_virtio_mmio_init(void)
{
	struct resource res[] = {
		DEFINE_RES_MEM(base, size),
		DEFINE_RES_IRQ(irq),
	};

	pdev = platform_device_register_simple("virtio-mmio", 0, res, ARRAY_SIZE(res));
	return PTR_ERR_OR_ZERO(pdev);
}

static void __exit xvt_virtio_mmio_exit(void)
{
	platform_device_unregister(pdev);
}

module_init(xvt_virtio_mmio_init);
module_exit(xvt_virtio_mmio_exit);
MODULE_DESCRIPTION("xvtrace test guest: a virtio-mmio device at a fixed window");
MODULE_LICENSE("GPL");
