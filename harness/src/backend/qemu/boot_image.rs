//! The A-B boot sector (`guest-images/x86/`) with END and PASS_MASK patched
//! in for the guest's memory, written to its own temporary directory.

use std::path::{Path, PathBuf};

use super::*;

/// The checked-in A-B boot sector (see `guest-images/x86/README.md`).
pub const AB_BOOTBLOCK: &[u8; 512] =
    include_bytes!("../../../../guest-images/x86/a-b-bootblock.img");
/// First byte of the test range (fixed in the guest).
pub const TEST_MEM_START: u64 = 1 << 20;
/// Default (and maximum) exclusive end of the test range.
pub const TEST_MEM_END_DEFAULT: u64 = 100 << 20;
/// Guest page size the A-B guest strides by.
pub const TEST_PAGE_SIZE: u64 = 4096;
/// Image offset of the little-endian u32 END.
pub const END_OFFSET: usize = 0x1fa;
/// Image offset of the little-endian u32 PASS_MASK.
pub const PASS_MASK_OFFSET: usize = 0x1f6;
/// PASS_MASK built into the checked-in image ('B' every 16 passes).
pub const PASS_MASK_DEFAULT: u32 = 15;
/// Smallest guest memory the A-B guest can run in (1 MiB below START plus
/// at least one test page plus the 1 MiB headroom).
pub const MIN_MEMORY_BYTES: u64 = TEST_MEM_START + TEST_PAGE_SIZE + (1 << 20);

/// The `[start, end)` range the A-B guest writes for a guest with
/// `memory_bytes` of RAM: `[1 MiB, min(100 MiB, memory - 1 MiB))`, the end
/// rounded down to a page. For memory below [`MIN_MEMORY_BYTES`] the range is
/// empty (`end == start`).
pub fn test_range(memory_bytes: u64) -> (u64, u64) {
    let end =
        TEST_MEM_END_DEFAULT.min(memory_bytes.saturating_sub(1 << 20)) & !(TEST_PAGE_SIZE - 1);
    (TEST_MEM_START, end.max(TEST_MEM_START))
}

/// The boot sector with END and PASS_MASK patched in.
pub fn ab_image(end: u64, pass_mask: u32) -> Result<[u8; 512], QemuError> {
    if end <= TEST_MEM_START || end & (TEST_PAGE_SIZE - 1) != 0 || end > u32::MAX as u64 {
        return Err(QemuError::BadImageParam(format!(
            "END {end:#x} must be page aligned, above {TEST_MEM_START:#x} and below 4 GiB"
        )));
    }
    if pass_mask.wrapping_add(1) & pass_mask != 0 {
        return Err(QemuError::BadImageParam(format!(
            "PASS_MASK {pass_mask:#x} must be 2^n - 1"
        )));
    }
    let mut img = *AB_BOOTBLOCK;
    img[END_OFFSET..END_OFFSET + 4].copy_from_slice(&(end as u32).to_le_bytes());
    img[PASS_MASK_OFFSET..PASS_MASK_OFFSET + 4].copy_from_slice(&pass_mask.to_le_bytes());
    Ok(img)
}

/// A patched copy of the A-B boot sector in its own temporary directory
/// (removed on drop). The file is writable, as `ide-hd` requires.
#[derive(Debug)]
pub struct BootImage {
    dir: tempfile::TempDir,
    path: PathBuf,
    start: u64,
    end: u64,
}

impl BootImage {
    /// Image for a guest with `memory_bytes` of RAM, END from [`test_range`],
    /// default PASS_MASK.
    pub fn for_memory(memory_bytes: u64) -> Result<Self, QemuError> {
        Self::for_memory_with_mask(memory_bytes, PASS_MASK_DEFAULT)
    }

    /// Like [`BootImage::for_memory`] with an explicit PASS_MASK.
    pub fn for_memory_with_mask(memory_bytes: u64, pass_mask: u32) -> Result<Self, QemuError> {
        if memory_bytes < MIN_MEMORY_BYTES {
            return Err(QemuError::MemoryTooSmall {
                memory_bytes,
                min: MIN_MEMORY_BYTES,
            });
        }
        let (_, end) = test_range(memory_bytes);
        Self::with_params(end, pass_mask)
    }

    /// Image with explicit END and PASS_MASK.
    pub fn with_params(end: u64, pass_mask: u32) -> Result<Self, QemuError> {
        let img = ab_image(end, pass_mask)?;
        let dir = tempfile::Builder::new().prefix("migtest-img-").tempdir()?;
        let path = dir.path().join("a-b-bootblock.img");
        std::fs::write(&path, img)?;
        Ok(BootImage {
            dir,
            path,
            start: TEST_MEM_START,
            end,
        })
    }

    /// Path of the image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the image (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `[start, end)` range this image's guest writes.
    pub fn test_range(&self) -> (u64, u64) {
        (self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_image_constants_match_checked_in_image() {
        assert_eq!(&AB_BOOTBLOCK[510..], &[0x55, 0xaa]);
        let end = u32::from_le_bytes(AB_BOOTBLOCK[END_OFFSET..END_OFFSET + 4].try_into().unwrap());
        assert_eq!(end as u64, TEST_MEM_END_DEFAULT);
        let mask = u32::from_le_bytes(
            AB_BOOTBLOCK[PASS_MASK_OFFSET..PASS_MASK_OFFSET + 4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(mask, PASS_MASK_DEFAULT);
        // the image starts with cli; cld
        assert_eq!(&AB_BOOTBLOCK[..2], &[0xfa, 0xfc]);
    }

    #[test]
    fn test_range_scales_with_memory() {
        const MIB: u64 = 1 << 20;
        assert_eq!(test_range(150 * MIB), (MIB, 100 * MIB));
        assert_eq!(test_range(101 * MIB), (MIB, 100 * MIB));
        assert_eq!(test_range(64 * MIB), (MIB, 63 * MIB));
        assert_eq!(test_range(64 * MIB + 100), (MIB, 63 * MIB));
        assert_eq!(test_range(4 * 1024 * MIB), (MIB, 100 * MIB));
        assert_eq!(test_range(MIB), (MIB, MIB));
        assert_eq!(test_range(0), (MIB, MIB));
        let (s, e) = test_range(MIN_MEMORY_BYTES);
        assert_eq!(e - s, TEST_PAGE_SIZE);
    }

    #[test]
    fn boot_image_patching() {
        const MIB: u64 = 1 << 20;
        let img = ab_image(63 * MIB, 63).unwrap();
        assert_eq!(
            &img[END_OFFSET..END_OFFSET + 4],
            &(63 * MIB as u32).to_le_bytes()
        );
        assert_eq!(
            &img[PASS_MASK_OFFSET..PASS_MASK_OFFSET + 4],
            &63u32.to_le_bytes()
        );
        assert_eq!(&img[..PASS_MASK_OFFSET], &AB_BOOTBLOCK[..PASS_MASK_OFFSET]);
        assert_eq!(&img[510..], &[0x55, 0xaa]);
        assert!(ab_image(MIB, 0).is_err());
        assert!(ab_image(63 * MIB + 1, 0).is_err());
        assert!(ab_image(8 << 30, 0).is_err());
        assert!(ab_image(63 * MIB, 5).is_err());
        assert!(ab_image(63 * MIB, 0).is_ok());
        assert!(ab_image(63 * MIB, u32::MAX).is_ok());

        let bi = BootImage::for_memory(64 * MIB).unwrap();
        assert_eq!(bi.test_range(), (MIB, 63 * MIB));
        let bytes = std::fs::read(bi.path()).unwrap();
        assert_eq!(bytes.len(), 512);
        assert_eq!(
            &bytes[END_OFFSET..END_OFFSET + 4],
            &(63 * MIB as u32).to_le_bytes()
        );
        assert!(!std::fs::metadata(bi.path())
            .unwrap()
            .permissions()
            .readonly());
        let dir = bi.dir().to_path_buf();
        drop(bi);
        assert!(!dir.exists());
        assert!(matches!(
            BootImage::for_memory(MIB),
            Err(QemuError::MemoryTooSmall { .. })
        ));
    }
}
