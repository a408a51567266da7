//! The plots' text: DejaVu Sans embedded in the binary (assets/fonts, licence beside it), laid
//! out and rasterised with ab_glyph, and [`Canvas`], plotters' RGB bitmap backend with its
//! text drawn that way. Plots thus render the same on a machine with no system fonts and no
//! fontconfig.
//!
//! Why not plotters' own `ab_glyph` feature: in plotters 0.3.7 it drops each glyph's left side
//! bearing (so "simclr" reads "sim clr") and sets text a third of its size above the anchor
//! (so titles are clipped at the top).

use ab_glyph::{point, Font, FontRef, Glyph, PxScale, ScaleFont};
use anyhow::{anyhow, Result};
use plotters::prelude::{BitMapBackend, DrawingBackend};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};
use std::sync::OnceLock;

const FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn font() -> Result<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or_else(|| anyhow!("the embedded font (DejaVu Sans) could not be read"))
}

/// `text` set at `size` pixels (ascent to descent): its glyphs, on a baseline at y = 0 from
/// x = 0, kerned, and its advance width.
fn set(font: &FontRef<'static>, size: f32, text: &str) -> (Vec<Glyph>, f32) {
    let scaled = font.as_scaled(PxScale::from(size));
    let mut glyphs = Vec::with_capacity(text.len());
    let mut pen = 0.0f32;
    let mut previous = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = previous {
            pen += scaled.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(size, point(pen, 0.0)));
        pen += scaled.h_advance(id);
        previous = Some(id);
    }
    (glyphs, pen)
}

/// The width in pixels of `text` at `size`.
pub(super) fn text_width(text: &str, size: f64) -> Result<u32> {
    let (_, width) = set(font()?, size as f32, text);
    Ok(width.ceil() as u32)
}

/// plotters' bitmap backend over an RGB buffer, drawing text with the embedded font.
pub(super) struct Canvas<'a> {
    bitmap: BitMapBackend<'a>,
}

impl<'a> Canvas<'a> {
    pub(super) fn new(rgb: &'a mut [u8], size: (u32, u32)) -> Self {
        Canvas {
            bitmap: BitMapBackend::with_buffer(rgb, size),
        }
    }
}

type Drawn<'a> = Result<(), DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.bitmap.get_size()
    }

    fn ensure_prepared(&mut self) -> Drawn<'a> {
        self.bitmap.ensure_prepared()
    }

    fn present(&mut self) -> Drawn<'a> {
        self.bitmap.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Drawn<'a> {
        self.bitmap.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Drawn<'a> {
        self.bitmap.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Drawn<'a> {
        self.bitmap.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Drawn<'a> {
        self.bitmap.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let width = text_width(text, style.size()).map_err(font_error)?;
        Ok((width, style.size().round() as u32))
    }

    /// Draws `text` anchored at `pos` as `style` says (horizontal and vertical position,
    /// rotation), each glyph at its own subpixel position, anti-aliased.
    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Drawn<'a> {
        let colour = style.color();
        if colour.alpha == 0.0 {
            return Ok(());
        }
        let font = font().map_err(font_error)?;
        let size = style.size() as f32;
        let scaled = font.as_scaled(PxScale::from(size));
        let (glyphs, width) = set(font, size, text);
        // The anchor's offset from the text's top-left corner; the box is ascent to descent.
        let height = scaled.ascent() - scaled.descent();
        let left = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let top = match style.anchor().v_pos {
            VPos::Top => 0.0,
            VPos::Center => -height / 2.0,
            VPos::Bottom => -height,
        };
        let baseline = top + scaled.ascent();
        let rotation = style.transform();
        let (w, h) = self.get_size();
        for mut glyph in glyphs {
            glyph.position = point(glyph.position.x + left, baseline);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue; // a space
            };
            let bounds = outline.px_bounds();
            outline.draw(|x, y, coverage| {
                let (dx, dy) = rotation.transform(
                    bounds.min.x as i32 + x as i32,
                    bounds.min.y as i32 + y as i32,
                );
                let (px, py) = (pos.0 + dx, pos.1 + dy);
                if coverage > 0.0 && px >= 0 && py >= 0 && (px as u32) < w && (py as u32) < h {
                    let shade = BackendColor {
                        alpha: colour.alpha * coverage.min(1.0) as f64,
                        rgb: colour.rgb,
                    };
                    // The bitmap backend cannot fail to draw an in-bounds pixel.
                    let _ = self.bitmap.draw_pixel((px, py), shade);
                }
            });
        }
        Ok(())
    }
}

fn font_error<E: std::error::Error + Send + Sync>(e: anyhow::Error) -> DrawingErrorKind<E> {
    DrawingErrorKind::FontError(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;
    use plotters::style::text_anchor::Pos;

    /// The rows and columns of `rgb` (`w` wide) that hold a dark pixel.
    fn ink_box(rgb: &[u8], w: u32) -> Option<(u32, u32, u32, u32)> {
        let mut b: Option<(u32, u32, u32, u32)> = None;
        for (i, p) in rgb.chunks(3).enumerate() {
            if p.iter().all(|&c| c < 128) {
                let (x, y) = (i as u32 % w, i as u32 / w);
                b = Some(match b {
                    None => (x, y, x, y),
                    Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
                });
            }
        }
        b
    }

    fn draw(text: &str, anchor: Pos, at: (i32, i32)) -> Vec<u8> {
        let (w, h) = (400u32, 200u32);
        let mut rgb = vec![255u8; (w * h * 3) as usize];
        {
            let area = Canvas::new(&mut rgb, (w, h)).into_drawing_area();
            let style = TextStyle::from(("sans-serif", 40.0).into_font()).pos(anchor);
            area.draw(&Text::new(text.to_string(), at, style)).unwrap();
            area.present().unwrap();
        }
        rgb
    }

    #[test]
    fn text_sits_where_it_is_anchored() {
        // "H" at 40 px, top-left anchored at (100, 50): its cap top is a few pixels below 50
        // (the ascent is above the cap height), its left edge one side bearing right of 100.
        let rgb = draw("H", Pos::new(HPos::Left, VPos::Top), (100, 50));
        let (x0, y0, _, y1) = ink_box(&rgb, 400).expect("no ink");
        let scaled = font().unwrap().as_scaled(PxScale::from(40.0));
        let bearing = scaled.h_side_bearing(scaled.glyph_id('H'));
        assert!(bearing > 2.0, "{bearing}");
        assert!(
            (x0 as f32 - (100.0 + bearing)).abs() <= 1.0,
            "left edge {x0}"
        );
        assert!((51..=60).contains(&y0), "top {y0}");
        assert!(y1 < 50 + 40, "bottom {y1}");
        // Centred on (200, 100): the ink's centre is near it.
        let rgb = draw("HH", Pos::new(HPos::Center, VPos::Center), (200, 100));
        let (x0, y0, x1, y1) = ink_box(&rgb, 400).expect("no ink");
        assert!(((x0 + x1) as i32 / 2 - 200).abs() <= 2, "x {x0}..{x1}");
        assert!(((y0 + y1) as i32 / 2 - 100).abs() <= 4, "y {y0}..{y1}");
    }

    #[test]
    fn widths_grow_with_text_and_size() {
        let a = text_width("simclr", 20.0).unwrap();
        assert!(a > 30 && a < 120, "{a}");
        assert!(text_width("simclr-resnet50", 20.0).unwrap() > a);
        assert!(text_width("simclr", 40.0).unwrap() >= 2 * a - 2);
        assert_eq!(text_width("", 20.0).unwrap(), 0);
    }
}
