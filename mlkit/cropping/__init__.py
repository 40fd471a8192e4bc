"""How a crop box is found, below the stages: the settings, the two methods' maps and the box.

`mlkit crop` and `mlkit look` (`mlkit.looking`) build on it, and so does
`mlkit predict` (stage 3), which crops a model's images as its training
images were cropped; so it imports no stage. Backbones come in as
`ModelParts`-like objects (preprocessing, backbone, image_size).
"""
