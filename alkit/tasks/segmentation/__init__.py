"""Tumour segmentation by patch classification (CAMELYON16): classifier, tumour oracle, mIoU."""
