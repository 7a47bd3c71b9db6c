// admin/panel: the web panel's files (src/admin/panel/*.html), built into the binary by
// cmake/embed.cmake so the panel works offline with nothing installed beside the server.
// It must never hold anything but static text: data reaches the page through the API only.
#pragma once

#include <string_view>

namespace bmx::admin {

std::string_view panel_file(std::string_view name);  // "" when there is no such file

}  // namespace bmx::admin
