/* Uses the installed library: a 1x1 CondConv layer with two experts and
 * external routing on the CPU path. W = 2*[1,0] + 3*[0,2] = [2,6],
 * b = 2*0.5 - 3 = -2, so y = 2*[1,2] + 6*[3,4] - 2 = [18, 26]. */
#include <condconv.h>
#include <stdio.h>

int main(void)
{
    condconv_context_t ctx;
    condconv_layer_desc_t desc;
    condconv_layer_t layer;
    const float experts[] = {1, 0, 0, 2}, bias[] = {0.5f, -1.0f}, alpha[] = {2, 3}, x[] = {1, 2, 3, 4};
    float y[2] = {0, 0};
    const condconv_params params = {experts, bias, NULL, NULL};
    if (condconv_context_create(&ctx, CONDCONV_DEVICE_CPU) != CONDCONV_STATUS_SUCCESS ||
        condconv_layer_desc_create(&desc) != CONDCONV_STATUS_SUCCESS ||
        condconv_layer_desc_set_conv(desc, 2, 1, 1, 1, 1, 1, 1, 1, 1) != CONDCONV_STATUS_SUCCESS ||
        condconv_layer_desc_set_experts(desc, 2, 1) != CONDCONV_STATUS_SUCCESS ||
        condconv_layer_desc_set_routing(desc, CONDCONV_ROUTING_EXTERNAL, 1.0f) != CONDCONV_STATUS_SUCCESS ||
        condconv_layer_create(ctx, desc, &params, &layer) != CONDCONV_STATUS_SUCCESS ||
        condconv_forward_cpu(layer, 1, 1, 2, x, y, alpha, NULL) != CONDCONV_STATUS_SUCCESS) {
        fprintf(stderr, "consumer: %s\n", condconv_last_error());
        return 1;
    }
    condconv_layer_destroy(layer);
    condconv_layer_desc_destroy(desc);
    condconv_context_destroy(ctx);
    printf("consumer: condconv %d, y = [%g, %g]\n", condconv_version(), (double)y[0], (double)y[1]);
    return (y[0] == 18.0f && y[1] == 26.0f) ? 0 : 1;
}
