"""Caption data: COCO-format annotations, converters into them, tokenisation, images and datasets."""
