//! The socket tutorial's programs, speaking their exact wire formats, so the
//! tutorial's Python clients and servers work against skiff (DESIGN section 6).
