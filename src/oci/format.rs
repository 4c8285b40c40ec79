//! How a layer's bytes become files: the blob is the file, or a tar (plain, gzip, zstd).
//! Named by a ModelPack media type's suffix, by an image layer's media type, or by a flag;
//! both the ModelPack names and the file plan read it, so it sits below both.

/// How a layer's bytes become files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// The blob is the file.
    Raw,
    Tar,
    TarGzip,
    TarZstd,
}

impl LayerFormat {
    pub fn suffix(self) -> &'static str {
        match self {
            LayerFormat::Raw => "raw",
            LayerFormat::Tar => "tar",
            LayerFormat::TarGzip => "tar+gzip",
            LayerFormat::TarZstd => "tar+zstd",
        }
    }
    pub fn parse(s: &str) -> Option<LayerFormat> {
        Some(match s {
            "raw" => LayerFormat::Raw,
            "tar" => LayerFormat::Tar,
            "tar+gzip" | "tar.gz" | "gzip" => LayerFormat::TarGzip,
            "tar+zstd" | "zstd" => LayerFormat::TarZstd,
            _ => return None,
        })
    }
    /// The format named by a ModelPack media type's suffix.
    pub(crate) fn of_modelpack(media_type: &str) -> Option<LayerFormat> {
        LayerFormat::parse(media_type.rsplit(".v1.").next()?)
    }
}
